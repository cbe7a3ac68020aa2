"""NPHM's layout: ``<sid:03d>/<eid:03d>/{scan,flame,registration}.ply``, texture, ``s/R/t.npy``.

All PLYs are in "NPHM space" = FLAME frame x 4 (docs/datasets.md). scan.ply is a binary PLY with
per-face ``texcoord`` (6 floats) and a ``comment TextureFile texture.png`` line; the scan has hair
(a new hairstyle per expression), a torso and bridging triangles. flame.ply is a deliberately rough
FLAME fit (:class:`RoughFit`), as NPHM's shipped fits are: a start for registration, not an answer.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.landmarks import frontal_landmarks
from p3dmm.flame.mesh import save_mesh
from p3dmm.pipeline.synth import scans as ss
from p3dmm.pipeline.synth import stress as st

NPHM_SCALE = 4.0
"""Stored coordinates = FLAME metres x NPHM_SCALE."""


def write_textured_ply(
    path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray, face_uv: np.ndarray, texture: str
) -> None:
    """Binary little-endian PLY with per-face ``texcoord`` lists, as MeshLab writes NPHM's scans.

    Args:
        vertices: (V, 3) float (stored float32). faces: (F, 3) int. face_uv: (F, 3, 2) UV per corner.
        texture: image file name written in the ``comment TextureFile`` header line.
    """
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"comment TextureFile {texture}\n"
        f"element vertex {len(vertices)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\n"
        "property list uchar int vertex_indices\nproperty list uchar float texcoord\nend_header\n"
    )
    rec = np.zeros(len(faces), dtype=[("n", "u1"), ("v", "<i4", 3), ("m", "u1"), ("t", "<f4", 6)])
    rec["n"], rec["v"], rec["m"] = 3, faces, 6
    rec["t"] = np.asarray(face_uv, dtype=np.float32).reshape(-1, 6)
    body = np.asarray(vertices, dtype="<f4").tobytes() + rec.tobytes()
    atomic_write(path, header.encode("ascii") + body)


def cylinder_uv(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 3, 2) per-corner UVs from a cylindrical projection around y (an atlas-like stand-in)."""
    corners = vertices[faces]  # (F, 3, 3)
    u = np.arctan2(corners[..., 0], corners[..., 2]) / (2 * np.pi) + 0.5
    y = corners[..., 1]
    v = (y - vertices[:, 1].min()) / max(np.ptp(vertices[:, 1]), 1e-9)
    return np.stack([u, v], axis=-1)


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write(path, buffer.getvalue())


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@dataclass(frozen=True)
class RoughFit:
    """How far the synthetic flame.ply is from the truth's FLAME parameters (defaults: docs/datasets.md
    gives the resulting per-vertex error). Coefficients are in units of their sigma, angles in degrees.

    Args:
        shape_sigma: noise on the first `shape_components` identity coefficients.
        expression_sigma: noise on the first `expression_components` expression coefficients.
        rotation_deg: noise per axis on the global rotation (axis-angle, added).
        jaw_deg: noise per axis on the jaw rotation.
        translation_mm: noise per axis on the translation.
    """

    shape_sigma: float = 0.3
    shape_components: int = 50
    expression_sigma: float = 0.3
    expression_components: int = 20
    rotation_deg: float = 1.0
    jaw_deg: float = 2.0
    translation_mm: float = 1.5


def rough_fit_rng(seed: int, subject: int, expression: int) -> np.random.Generator:
    """The rough fit's own random stream, from the writer's seed and the scan's ids: drawing from the main
    stream would change every file written after the first flame.ply."""
    return np.random.default_rng([seed, subject, expression, 0x666C616D])  # "flam"


def rough_params(params: dict[str, np.ndarray], rng: np.random.Generator,
                 rough: RoughFit = RoughFit()) -> dict[str, np.ndarray]:
    """The truth's FLAME parameters (:func:`scans.sample_params` keys) with :class:`RoughFit` noise."""
    out = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}
    k = min(rough.shape_components, len(out["shape"]))
    out["shape"][:k] += rng.normal(0.0, rough.shape_sigma, k)
    k = min(rough.expression_components, len(out["expression"]))
    out["expression"][:k] += rng.normal(0.0, rough.expression_sigma, k)
    pose = out["pose"].reshape(5, 3)
    pose[0] += np.radians(rng.normal(0.0, rough.rotation_deg, 3))
    pose[2] += np.radians(rng.normal(0.0, rough.jaw_deg, 3))
    out["pose"] = pose.reshape(15)
    out["translation"] = out["translation"] + rng.normal(0.0, rough.translation_mm * 1e-3, 3)
    return out


def write_nphm(
    out: str | os.PathLike,
    assets: FlameAssets,
    subjects: int | Sequence[int] = 2,
    expressions: int | Sequence[int] = 2,
    seed: int = 0,
    *,
    target_faces: int = 8000,
    texture_size: int = 256,
    stress: bool = False,
) -> list[str]:
    """Write a synthetic NPHM dataset and its truth; returns the scan ids ("nphm/017/000", ...).

    Args:
        subjects: a count (ids 17, 18, ...) or explicit subject ids.
        expressions: a count (ids 0, 1, ...) or explicit expression ids.
        target_faces: minimum faces of the head part of each scan (before clutter).
        stress: hard parameters and raw-scan-like meshes (:mod:`p3dmm.pipeline.synth.stress`) instead of
            the densified truth plus :func:`scans.add_clutter`.

    flame.ply is FLAME of :func:`rough_params` (about 6 mm median off the truth over the face), drawn from
    :func:`rough_fit_rng`, so every other file is what it would be with an exact fit.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    sids = list(range(17, 17 + subjects)) if isinstance(subjects, int) else list(subjects)
    eids = list(range(expressions)) if isinstance(expressions, int) else list(expressions)
    faces = assets.model.faces
    n_shape = assets.model.num_shape
    n_expr = assets.model.num_expression
    eyes = np.concatenate([assets.masks.get("left_eyeball", []), assets.masks.get("right_eyeball", [])])
    eyes = eyes.astype(np.int64)
    sample = st.stress_params if stress else ss.sample_params
    ids = []
    for sid in sids:
        identity = sample(rng, n_shape, n_expr)["shape"]
        for eid in eids:
            params = sample(rng, n_shape, n_expr)
            params["shape"] = identity
            folder = out / f"{sid:03d}" / f"{eid:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            fit = ss.posed_truth(assets, params)
            truth = ss.add_detail(fit, faces, rng)
            if stress:
                sv, sf = st.stress_scan(assets, truth, rng)
            else:
                sv, sf = ss.dense_scan(truth, faces, target_faces, rng, exclude_vertices=eyes)
                sv, sf = ss.add_clutter(sv, sf, truth, faces, assets.masks, rng)
            face_uv = cylinder_uv(sv, sf)
            write_textured_ply(folder / "scan.ply", sv * NPHM_SCALE, sf, face_uv, "texture.png")
            albedo = ss.scan_albedo(assets, truth, sv, rng)
            ss.save_png(folder / "texture.png", ss.bake_texture(face_uv, sf, albedo, texture_size))
            rough = ss.posed_truth(assets, rough_params(params, rough_fit_rng(seed, sid, eid)))
            save_mesh(folder / "flame.ply", rough * NPHM_SCALE, faces)
            rv, rf = ss.subdivide_until(truth, faces, 2 * len(faces))
            save_mesh(folder / "registration.ply", rv * NPHM_SCALE, rf)
            s = np.float64(rng.uniform(0.0038, 0.0042))
            _save_npy(folder / "s.npy", np.asarray(s))
            _save_npy(folder / "R.npy", _random_rotation(rng))
            _save_npy(folder / "t.npy", rng.normal(0.0, 0.05, 3))
            scan_id = f"nphm/{sid:03d}/{eid:03d}"
            ss.write_truth(out, scan_id, truth, 1.0, params, frontal_landmarks(assets, truth))
            ids.append(scan_id)
    return ids
