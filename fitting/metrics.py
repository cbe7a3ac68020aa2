"""Geometry metrics of a fitted mesh against a ground-truth surface (pure numpy/scipy).

Alignment: rigid (or similarity) Umeyama on corresponding landmarks, then ICP of the predicted face
region onto the ground-truth surface (closest points, trimmed). Metrics over the face region, in mm,
from surface samples of each mesh to the other mesh's surface: Chamfer L1 (mean of the two directed mean
distances) and L2 (root of the mean squared distances), normal consistency (mean |cos| between a
sample's normal and the normal of the face it lands on), F-score at 1 and 5 mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from scipy.spatial import cKDTree


def umeyama(src: np.ndarray, dst: np.ndarray, scale: bool = False) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) minimising |s R src + t - dst|^2 over corresponding rows (P, 3); dst = s src R^T + t."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rot = u @ np.diag(d) @ vt
    s = float((sig * d).sum() / (a**2).sum() * len(src)) if scale else 1.0
    return s, rot, mu_d - s * rot @ mu_s


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """(count, 3) points uniformly on a mesh."""
    points, _ = trimesh.sample.sample_surface(trimesh.Trimesh(vertices, faces, process=False), count, seed=seed)
    return np.asarray(points)


def icp(src: np.ndarray, target_tree: cKDTree, target: np.ndarray, iterations: int = 20, scale: bool = False,
        trim: float = 0.9) -> tuple[float, np.ndarray, np.ndarray]:
    """Align points `src` to `target` (points with a KD-tree): trimmed point-to-point ICP; returns (s, R, t)."""
    s, rot, t = 1.0, np.eye(3), np.zeros(3)
    for _ in range(iterations):
        moved = s * src @ rot.T + t
        dist, idx = target_tree.query(moved)
        keep = dist <= np.quantile(dist, trim)
        ds, drot, dt = umeyama(moved[keep], target[idx[keep]], scale)
        s, rot, t = ds * s, drot @ rot, ds * drot @ t + dt
    return s, rot, t


@dataclass(frozen=True)
class GeometryMetrics:
    chamfer_l1_mm: float
    chamfer_l2_mm: float
    normal_consistency: float
    fscore_1mm: float
    fscore_5mm: float
    pred_to_gt_mm: float
    gt_to_pred_mm: float


def _to_surface(points: np.ndarray, normals: np.ndarray, mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """Distances from points to a mesh surface and |cos| between the points' normals and the faces hit."""
    _, dist, tri = trimesh.proximity.closest_point(mesh, points)
    return np.asarray(dist), np.abs((normals * mesh.face_normals[tri]).sum(-1))


def compare_surfaces(pred: trimesh.Trimesh, gt: trimesh.Trimesh, samples: int = 20000) -> GeometryMetrics:
    """Metrics between two aligned meshes (metres in, mm out): surface samples of each to the other's surface
    (point-to-mesh, so there is no sampling floor: identical surfaces give 0)."""
    pred_points, pred_face = trimesh.sample.sample_surface(pred, samples, seed=2)
    gt_points, gt_face = trimesh.sample.sample_surface(gt, samples, seed=1)
    d_pg, cos_pg = _to_surface(np.asarray(pred_points), pred.face_normals[pred_face], gt)
    d_gp, cos_gp = _to_surface(np.asarray(gt_points), gt.face_normals[gt_face], pred)
    cos = np.concatenate([cos_pg, cos_gp])

    def fscore(tau: float) -> float:
        precision, recall = (d_pg < tau).mean(), (d_gp < tau).mean()
        return float(2 * precision * recall / max(precision + recall, 1e-12))

    return GeometryMetrics(
        chamfer_l1_mm=float((d_pg.mean() + d_gp.mean()) / 2 * 1000),
        chamfer_l2_mm=float(np.sqrt(((d_pg**2).mean() + (d_gp**2).mean()) / 2) * 1000),
        normal_consistency=float(cos.mean()),
        fscore_1mm=fscore(0.001), fscore_5mm=fscore(0.005),
        pred_to_gt_mm=float(d_pg.mean() * 1000), gt_to_pred_mm=float(d_gp.mean() * 1000))


def evaluate_face(pred_vertices: np.ndarray, gt_vertices: np.ndarray, faces: np.ndarray, region_faces: np.ndarray,
                  pred_landmarks: np.ndarray, gt_landmarks: np.ndarray, *, similarity: bool = False,
                  samples: int = 20000, icp_iterations: int = 20, crop_mm: float = 10.0) -> GeometryMetrics:
    """Align a FLAME-topology prediction to a ground-truth mesh (landmarks, then ICP) and measure the face.

    pred_vertices, gt_vertices: (V, 3) metres (the ground truth may have another topology when `faces` is a
    tuple (pred_faces, gt_faces) and region_faces a tuple of masks). Landmarks: (L, 3) corresponding points.
    A ground-truth region of None crops the ground truth to the faces within `crop_mm` of the landmark-aligned
    prediction's face region (scans and meshes of other topologies cover more than the face).
    """
    pred_faces, gt_faces = faces if isinstance(faces, tuple) else (faces, faces)
    pred_region, gt_region = region_faces if isinstance(region_faces, tuple) else (region_faces, region_faces)
    s, rot, t = umeyama(pred_landmarks, gt_landmarks, similarity)
    pred = s * pred_vertices @ rot.T + t
    if gt_region is None:
        near, _ = cKDTree(pred[np.unique(pred_faces[pred_region])]).query(gt_vertices[gt_faces].mean(1))
        gt_region = near < crop_mm / 1000
    gt_pts = sample_surface(gt_vertices, gt_faces[gt_region], samples, seed=1)
    pred_pts = sample_surface(pred, pred_faces[pred_region], samples, seed=2)
    s2, rot2, t2 = icp(pred_pts, cKDTree(gt_pts), gt_pts, icp_iterations, similarity)
    pred = s2 * pred @ rot2.T + t2
    return compare_surfaces(trimesh.Trimesh(pred, pred_faces[pred_region], process=False),
                            trimesh.Trimesh(gt_vertices, gt_faces[gt_region], process=False), samples)
