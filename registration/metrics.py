"""How well a registered mesh explains the scan, in millimetres of FLAME (aligned frame / scale)."""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import cKDTree


def scan_distances(
    scan_points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, region_faces: np.ndarray,
    skin_faces: np.ndarray, gate: float,
) -> np.ndarray:
    """(P,) distance of every scan point to the registered surface; NaN where the point is not scored.

    scan_points: (P, 3); vertices: (V, 3) registered mesh; faces: (F, 3); region_faces, skin_faces: (F,)
    bool. A scan point is scored when its closest point on the skin surface lies on a region face and is
    closer than `gate` (so hair, torso and background are not scored). Same units as the inputs.
    """
    out = np.full(len(scan_points), np.nan)
    region_v = np.unique(faces[region_faces])
    edge = float(np.median(np.linalg.norm(vertices[faces[:, 0]] - vertices[faces[:, 1]], axis=1)))
    d, _ = cKDTree(vertices[region_v]).query(scan_points, distance_upper_bound=gate + 2 * edge)
    cand = np.nonzero(np.isfinite(d))[0]
    if len(cand) == 0:
        return out
    skin_idx = np.nonzero(skin_faces)[0]
    mesh = trimesh.Trimesh(vertices, faces[skin_idx], process=False)
    _, dist, tri = trimesh.proximity.closest_point(mesh, scan_points[cand])
    keep = region_faces[skin_idx[tri]] & (dist < gate)
    out[cand[keep]] = dist[keep]
    return out


def scan_to_surface(
    scan_points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, region_faces: np.ndarray,
    skin_faces: np.ndarray, gate: float,
) -> np.ndarray:
    """Distances (N,) from the scored scan points to the registered surface (see :func:`scan_distances`)."""
    d = scan_distances(scan_points, vertices, faces, region_faces, skin_faces, gate)
    return d[np.isfinite(d)]


def coverage(
    vertices: np.ndarray, normals: np.ndarray, region: np.ndarray, scan_points: np.ndarray,
    scan_normals: np.ndarray | None, scan_tree: cKDTree, radius: float,
) -> float:
    """Fraction of region vertices with scan support: the nearest scan point is within `radius` along
    its normal (point-to-plane) and within max(radius, 2x the local scan spacing) in 3-D.

    vertices, normals: (V, 3); region: (V,) bool; scan_points: (P, 3) with normals (P, 3) or None.
    """
    idx = np.nonzero(region)[0]
    if len(idx) == 0:
        return 0.0
    d, j = scan_tree.query(vertices[idx])
    spacing = scan_tree.query(scan_points[j], k=2)[0][:, 1]
    n = scan_normals[j] if scan_normals is not None else normals[idx]
    plane = np.abs(np.einsum("pi,pi->p", vertices[idx] - scan_points[j], n))
    ok = (plane < radius) & (d < np.maximum(radius, 2.0 * spacing))
    return float(ok.mean())


def summary_mm(distances: np.ndarray, units_per_mm: float) -> dict[str, float]:
    """mean/median/p95 in mm of distances given in some unit (units_per_mm of it make a FLAME mm)."""
    if len(distances) == 0:
        return {"mean_mm": float("inf"), "median_mm": float("inf"), "p95_mm": float("inf"), "n_points": 0}
    d = distances / units_per_mm
    return {"mean_mm": float(d.mean()), "median_mm": float(np.median(d)), "p95_mm": float(np.quantile(d, 0.95)),
            "n_points": int(len(d))}
