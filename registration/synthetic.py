"""Synthetic test scans with known ground truth, for tests and the benchmark (not used by register_scan).

A random FLAME head (shape, expression, pose) plus smooth 0.5 mm detail is the truth; the scan is a
denser re-triangulation of it with noise, a hole, no eyeballs, a hair cap instead of the scalp and a
cylinder torso below the neck, optionally moved to an arbitrary similarity frame (mm, rotated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from scipy.spatial.transform import Rotation

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.mesh import vertex_normals_np
from p3dmm.flame.model import FLAME
from p3dmm.flame.scan import ScanGeometry, ScanRecord
from p3dmm.flame.similarity import Similarity


@dataclass(frozen=True)
class SyntheticScan:
    """scan: the input; truth: (V, 3) FLAME metres (FLAME frame); to_scan: FLAME metres -> scan frame."""

    scan: ScanGeometry
    truth: np.ndarray
    to_scan: Similarity


def _mask(assets: FlameAssets, name: str, num_v: int) -> np.ndarray:
    out = np.zeros(num_v, dtype=bool)
    out[np.asarray(assets.masks.get(name, []), dtype=np.int64)] = True
    return out


def _subdivide(v: np.ndarray, f: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    while len(v) < target / 3.5:
        v, f = trimesh.remesh.subdivide(v, f)
    return v, f


def make_scan(
    assets: FlameAssets, seed: int, *, landmarks: bool = True, arbitrary_frame: bool = False,
    target_points: int = 15000, noise: float = 2e-4, n_shape: int = 100, n_expression: int = 50,
    clutter: bool = True,
) -> SyntheticScan:
    """Build one scan. All truth in FLAME metres; `arbitrary_frame` = random rotation, x1000, offset."""
    rng = np.random.default_rng(seed)
    flame = FLAME(assets, n_shape=n_shape, n_expression=n_expression, dtype=torch.float64)
    shape = rng.normal(size=(1, n_shape)) * 0.8
    expr = np.zeros((1, n_expression))
    expr[0, :10] = rng.normal(size=10) * 0.6
    pose = np.zeros((1, 15))
    pose[0, :3] = rng.normal(size=3) * 0.1
    pose[0, 3:6] = rng.normal(size=3) * 0.05
    pose[0, 6] = abs(rng.normal()) * 0.05
    pose[0, 9:] = rng.normal(size=6) * 0.05
    with torch.no_grad():
        out = flame(shape=torch.as_tensor(shape), expression=torch.as_tensor(expr), pose=torch.as_tensor(pose),
                    translation=torch.as_tensor(rng.normal(size=(1, 3)) * 0.01))
    faces = np.asarray(assets.model.faces, dtype=np.int64)
    v = out.vertices[0].numpy().copy()
    num_v = len(v)
    eyes = _mask(assets, "left_eyeball", num_v) | _mask(assets, "right_eyeball", num_v)
    # smooth detail: sum of a few 0.5 mm plane waves along the normals, skin only
    n = vertex_normals_np(v, faces)
    dirs = rng.normal(size=(4, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    waves = np.sin(v @ dirs.T * (2 * np.pi / 0.04) + rng.uniform(0, 2 * np.pi, 4)).sum(axis=1) / 2.0
    truth = v + (~eyes)[:, None] * n * (5e-4 * waves)[:, None]

    scalp = _mask(assets, "scalp", num_v)
    keep = ~eyes[faces].any(axis=1) & ~scalp[faces].all(axis=1)
    sv, sf = _subdivide(truth, faces[keep], target_points)
    # re-sample: slide every scan vertex along the surface by ~1/3 of the spacing and project it back onto
    # the truth, so the scan does not contain the truth vertices themselves (a real scanner would not)
    edge = float(np.median(np.linalg.norm(sv[sf[:, 0]] - sv[sf[:, 1]], axis=1)))
    sn = vertex_normals_np(sv, sf)
    jitter = rng.normal(size=sv.shape) * edge / 3
    jitter -= np.einsum("pi,pi->p", jitter, sn)[:, None] * sn
    sv = trimesh.proximity.closest_point(trimesh.Trimesh(truth, faces[keep], process=False), sv + jitter)[0]
    # a hole on one cheek
    face_idx = np.nonzero(_mask(assets, "face", num_v) & ~eyes)[0]
    centre = truth[rng.choice(face_idx)]
    hole = np.linalg.norm(sv[sf].mean(axis=1) - centre, axis=1) < 0.012
    sf = sf[~hole]
    used = np.unique(sf)
    remap = np.full(len(sv), -1)
    remap[used] = np.arange(len(used))
    sv, sf = sv[used], remap[sf]
    sv = sv + rng.normal(size=sv.shape) * noise
    parts_v, parts_f = [sv], [sf]
    if clutter:
        cap_f = faces[scalp[faces].all(axis=1)]
        cap_v = truth + n * 0.015
        cv, cf = _subdivide(cap_v, cap_f, target_points / 6)
        parts_v.append(cv)
        parts_f.append(cf)
        neck = _mask(assets, "neck", num_v)
        low = truth[neck] if neck.any() else truth
        cyl = trimesh.creation.cylinder(radius=0.12, height=0.2, sections=48)
        cyl.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
        cyl.apply_translation([low[:, 0].mean(), low[:, 1].min() - 0.13, low[:, 2].mean()])
        cyl = cyl.subdivide().subdivide().subdivide()
        parts_v.append(np.asarray(cyl.vertices))
        parts_f.append(np.asarray(cyl.faces))
    offset = 0
    all_f = []
    for pv, pf in zip(parts_v, parts_f, strict=True):
        all_f.append(pf + offset)
        offset += len(pv)
    verts, tris = np.concatenate(parts_v), np.concatenate(all_f)
    lm = None
    if landmarks and out.landmarks is not None:
        lm = out.landmarks[0].numpy() + rng.normal(size=(68, 3)) * 1e-3
    sim = Similarity(1.0, np.eye(3), np.zeros(3))
    if arbitrary_frame:
        sim = Similarity(1000.0, Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3) * 300)
        verts = sim.apply(verts)
        lm = None if lm is None else sim.apply(lm)
    record = ScanRecord(scan_id=f"synthetic/{seed}", dataset="synthetic", subject=str(seed), expression="random",
                        geometry="<memory>", to_flame_scale=None)
    scan = ScanGeometry(record=record, vertices=verts, faces=tris, landmarks=lm, frame_known=not arbitrary_frame)
    return SyntheticScan(scan=scan, truth=truth, to_scan=sim)


def sphere_scan(radius: float = 0.1) -> ScanGeometry:
    """A head-sized sphere (about 10k vertices) in FLAME's frame: geometry no head registration should accept."""
    m = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    record = ScanRecord(scan_id="synthetic/sphere", dataset="synthetic", subject="sphere", expression="none",
                        geometry="<memory>")
    return ScanGeometry(record=record, vertices=np.asarray(m.vertices), faces=np.asarray(m.faces), frame_known=True)


def correspondence_error_mm(vertices_scan: np.ndarray, s: SyntheticScan, region: np.ndarray) -> np.ndarray:
    """Per-vertex error (N,) in mm over `region` (V,) bool: registration mapped back to FLAME vs truth."""
    back = s.to_scan.invert_points(vertices_scan)
    return np.linalg.norm(back[region] - s.truth[region], axis=1) * 1e3
