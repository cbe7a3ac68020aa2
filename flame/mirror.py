"""Left/right symmetry of the FLAME template: vertex twins and the UV symmetry axis.

FLAME's frame has x towards the subject's left, y up, z forward, and the template is symmetric
about the plane x = 0, so the twin of vertex i is the vertex nearest to (-x_i, y_i, z_i). The map
is computed from the template (never from a posed or scanned mesh, whose asymmetry is the signal),
and is used by the fitting's mirror-symmetry term and by the network's horizontal-flip augmentation,
which maps a UV target u to 2 * axis - u about the axis measured here (not an assumed 0.5).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class MirrorMatch:
    """Nearest mirrored neighbour of every vertex, without any symmetry verdict.

    Args:
        index: (V,) int64, index of the vertex nearest to (-x_i, y_i, z_i).
        residual: (V,) float64, that distance, in the units of the vertices (metres for FLAME).
    """

    index: np.ndarray
    residual: np.ndarray


def _check_vertices(vertices: np.ndarray) -> np.ndarray:
    vertices = np.asarray(vertices, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise ValueError(f"mirror: vertices must be (V, 3) with V > 0, got {vertices.shape}")
    if not np.isfinite(vertices).all():
        raise ValueError("mirror: vertices contain NaN or inf")
    return vertices


def mirror_nearest(vertices: np.ndarray) -> MirrorMatch:
    """For each vertex, the nearest vertex to its reflection across x = 0, and the distance to it.

    Use this to inspect an almost-symmetric mesh; :func:`mirror_map` is the checked version.

    Args:
        vertices: (V, 3) float, template vertices in the FLAME frame (x = subject's left).
    """
    vertices = _check_vertices(vertices)
    reflected = vertices * np.array([-1.0, 1.0, 1.0])
    residual, index = cKDTree(vertices).query(reflected, k=1)
    return MirrorMatch(index=np.asarray(index, dtype=np.int64), residual=np.asarray(residual, np.float64))


def mirror_map(vertices: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """Index of every vertex's left/right twin across the plane x = 0, verified.

    Args:
        vertices: (V, 3) float, template vertices in the FLAME frame (x = subject's left).
        tol: largest accepted distance between a reflected vertex and its twin, in the units of
            ``vertices`` (1e-4 = 0.1 mm for FLAME in metres).

    Returns:
        (V,) int64 ``mirror`` with ``mirror[mirror] == arange(V)``; vertices on the plane x = 0 are
        their own twins.

    Raises:
        ValueError: the mesh is not mirror-symmetric within ``tol`` (the message names the worst
            vertex and its residual), or the nearest-twin map is not an involution (two vertices share
            a twin). For a diagnosis without the check, call :func:`mirror_nearest`.
    """
    if tol is None or not np.isfinite(tol) or tol <= 0:
        raise ValueError(f"mirror_map: tol must be a positive distance, got {tol}; use mirror_nearest() to skip the check")
    match = mirror_nearest(vertices)
    worst = int(np.argmax(match.residual))
    if match.residual[worst] > tol:
        n_bad = int((match.residual > tol).sum())
        raise ValueError(
            f"mirror_map: mesh is not mirror-symmetric about x = 0 within tol={tol:g}: {n_bad} vertices "
            f"exceed it, worst vertex {worst} at residual {match.residual[worst]:.3g}; check the frame "
            "(FLAME: x = subject's left) or pass a larger tol"
        )
    index = match.index
    broken = np.flatnonzero(index[index] != np.arange(len(index)))
    if broken.size:
        i = int(broken[0])
        raise ValueError(
            f"mirror_map: twin map is not an involution at {broken.size} vertices (e.g. {i} -> {index[i]} -> "
            f"{index[index[i]]}); duplicate or near-coincident vertices closer than tol={tol:g}?"
        )
    return index


def uv_mirror_axis(
    vertex_uv: np.ndarray, mirror: np.ndarray, vertices: np.ndarray | None = None
) -> tuple[float, float]:
    """The u of the UV layout's symmetry axis, from twin vertices' UVs.

    axis = mean_i (u_i + u_mirror(i)) / 2; a horizontally flipped image has UV target u' = 2 axis - u.

    Args:
        vertex_uv: (V, 2) float per-vertex (u, v) (either v convention: only u is used).
        mirror: (V,) int64 from :func:`mirror_map`.
        vertices: optional indices to average over, e.g. the face mask: vertices on a seam or at a
            pole map onto themselves across the chart's edge and would bias the axis.

    Returns:
        (axis, std): the mean midpoint u and the standard deviation of the midpoints (small for a
        layout that really is mirror-symmetric; check it before trusting the flip).
    """
    uv = np.asarray(vertex_uv, dtype=np.float64)
    mirror = np.asarray(mirror)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv_mirror_axis: vertex_uv must be (V, 2), got {uv.shape}")
    if mirror.shape != (len(uv),) or not np.issubdtype(mirror.dtype, np.integer):
        raise ValueError(f"uv_mirror_axis: mirror must be integer ({len(uv)},), got {mirror.dtype} {mirror.shape}")
    if mirror.min() < 0 or mirror.max() >= len(uv):
        raise ValueError(f"uv_mirror_axis: mirror indices must lie in [0, {len(uv)})")
    mid = 0.5 * (uv[:, 0] + uv[mirror, 0])
    if vertices is not None:
        mid = mid[np.asarray(vertices)]
    return float(mid.mean()), float(mid.std())


def mirror_axis_of(flame_dir: str | os.PathLike) -> float:
    """u of the FLAME UV layout's mirror axis, from twin vertices over the face (see flame.mirror)."""
    from p3dmm.flame.files import load_assets

    assets = load_assets(flame_dir)
    if assets.uv is None:
        raise ValueError(f"{flame_dir}: no UV layout; pass --data.mirror_axis")
    mirror = mirror_map(assets.model.v_template)
    axis, _ = uv_mirror_axis(assets.uv.vertex_uv, mirror, assets.masks.get("face"))
    return axis
