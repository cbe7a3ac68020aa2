"""A generic folder: ``<name>.ply`` / ``<name>.obj`` meshes and vertex-only ``.ply`` point clouds in metres,
FLAME frame, with optional ``<name>.lmk.npy`` (68, 3) landmarks (a user's own scans)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import trimesh

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.landmarks import frontal_landmarks
from p3dmm.flame.mesh import save_mesh
from p3dmm.pipeline.synth import scans as ss
from p3dmm.pipeline.synth import stress as st

KINDS = ("mesh_ply", "mesh_obj", "points_ply")
"""Scan n (in writing order) is ``KINDS[n % 3]``; meshes in .ply and point clouds get landmarks."""


def write_generic(
    out: str | os.PathLike,
    assets: FlameAssets,
    subjects: int = 2,
    expressions: int = 2,
    seed: int = 0,
    *,
    target_faces: int = 4000,
    landmark_noise_m: float = 0.5e-3,
    stress: bool = False,
) -> list[str]:
    """Write ``head<s>_<e>`` scans cycling through :data:`KINDS`; returns ids ("generic/head0_0", ...).

    ``stress=True``: hard parameters and raw-scan-like meshes (:mod:`p3dmm.pipeline.synth.stress`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    faces = assets.model.faces
    n_shape, n_expr = assets.model.num_shape, assets.model.num_expression
    eyes = np.concatenate([assets.masks.get("left_eyeball", []), assets.masks.get("right_eyeball", [])])
    sample = st.stress_params if stress else ss.sample_params
    ids = []
    for s in range(subjects):
        identity = sample(rng, n_shape, n_expr)["shape"]
        for e in range(expressions):
            kind = KINDS[len(ids) % len(KINDS)]
            name = f"head{s}_{e}"
            params = sample(rng, n_shape, n_expr)
            params["shape"] = identity
            truth = ss.add_detail(ss.posed_truth(assets, params), faces, rng)
            if stress:
                sv, sf = st.stress_scan(assets, truth, rng)
            else:
                sv, sf = ss.dense_scan(truth, faces, target_faces, rng, exclude_vertices=eyes.astype(np.int64))
            if kind == "mesh_obj":
                save_mesh(out / f"{name}.obj", sv, sf)
            elif kind == "mesh_ply":
                save_mesh(out / f"{name}.ply", sv, sf)
            else:
                data = trimesh.PointCloud(sv).export(file_type="ply")
                atomic_write(out / f"{name}.ply", data if isinstance(data, bytes) else data.encode())
            lmk = frontal_landmarks(assets, truth)
            if kind != "mesh_obj":
                buffer = io.BytesIO()
                np.save(buffer, lmk + rng.normal(0.0, landmark_noise_m / np.sqrt(3), lmk.shape))
                atomic_write(out / f"{name}.lmk.npy", buffer.getvalue())
            scan_id = f"generic/{name}"
            ss.write_truth(out, scan_id, truth, 1.0, params, lmk)
            ids.append(scan_id)
    return ids
