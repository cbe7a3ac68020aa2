"""A closed-ring latitude/longitude mesh with UVs: the shared builder of the head and eyeball meshes.

Rings run top to bottom, each with C vertices ordered by increasing azimuth. Seen from outside with
the top up, azimuth grows to the right, so quads split as below are counter-clockwise (outward).
A ring wraps around, but its UV chart does not: the wrap column gets its own texture coordinates,
which is why a layout has more `vt` than vertices (as FLAME's does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LatLongMesh:
    verts: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    vt: np.ndarray  # (T, 2) float64
    ft: np.ndarray  # (F, 3) int64
    grid: np.ndarray  # (R, C) int64 vertex index of ring vertex (i, j)
    face_cell: np.ndarray  # (F, 2) int64 (ring i, column j) of the quad a face came from; (-1, j) for caps


def latlong_mesh(
    rings: np.ndarray,
    top: np.ndarray | None,
    bottom: np.ndarray | None,
    uv_rect: tuple[float, float, float, float],
    mirror_diagonals: np.ndarray | None = None,
) -> LatLongMesh:
    """Mesh rings (R, C, 3) with optional pole vertices, and a UV chart u0..u1 x v0..v1 (v up).

    `mirror_diagonals` (C,) bool flips the quad diagonal per column, so a layout symmetric in
    azimuth gives a mirror-symmetric triangulation.
    """
    R, C, _ = rings.shape
    u0, u1, v0, v1 = uv_rect
    offset = 1 if top is not None else 0
    grid = offset + np.arange(R * C).reshape(R, C)
    verts = [top[None]] if top is not None else []
    verts.append(rings.reshape(-1, 3))
    if bottom is not None:
        verts.append(bottom[None])
    verts = np.concatenate(verts)

    # texture coordinates: (R, C + 1) grid with a separate wrap column
    us = u0 + (u1 - u0) * np.arange(C + 1) / C
    vs = v1 - (v1 - v0) * (np.arange(R) + (1 if top is not None else 0)) / (R - 1 + (top is not None) + (bottom is not None))
    vt_grid = np.stack(np.meshgrid(us, vs, indexing="xy"), axis=-1).reshape(-1, 2)
    vt_index = np.arange(R * (C + 1)).reshape(R, C + 1)
    vt = [vt_grid]
    n_vt = len(vt_grid)

    faces, ft, cells = [], [], []
    flip = np.zeros(C, dtype=bool) if mirror_diagonals is None else mirror_diagonals
    for i in range(R - 1):
        for j in range(C):
            jn = (j + 1) % C
            a, b, c, d = grid[i, j], grid[i, jn], grid[i + 1, j], grid[i + 1, jn]  # TL TR BL BR
            ta, tb, tc, td = vt_index[i, j], vt_index[i, j + 1], vt_index[i + 1, j], vt_index[i + 1, j + 1]
            if flip[j]:
                faces += [(a, c, b), (b, c, d)]
                ft += [(ta, tc, tb), (tb, tc, td)]
            else:
                faces += [(a, c, d), (a, d, b)]
                ft += [(ta, tc, td), (ta, td, tb)]
            cells += [(i, j), (i, j)]
    if top is not None:
        pole_vt = np.stack([0.5 * (us[:-1] + us[1:]), np.full(C, v1)], axis=-1)
        for j in range(C):
            faces.append((0, grid[0, j], grid[0, (j + 1) % C]))
            ft.append((n_vt + j, vt_index[0, j], vt_index[0, j + 1]))
            cells.append((-1, j))
        vt.append(pole_vt)
        n_vt += C
    if bottom is not None:
        b_idx = len(verts) - 1
        pole_vt = np.stack([0.5 * (us[:-1] + us[1:]), np.full(C, v0)], axis=-1)
        for j in range(C):
            faces.append((b_idx, grid[R - 1, (j + 1) % C], grid[R - 1, j]))
            ft.append((n_vt + j, vt_index[R - 1, j + 1], vt_index[R - 1, j]))
            cells.append((R, j))
        vt.append(pole_vt)
    return LatLongMesh(
        verts=verts,
        faces=np.asarray(faces, dtype=np.int64),
        vt=np.concatenate(vt),
        ft=np.asarray(ft, dtype=np.int64),
        grid=grid,
        face_cell=np.asarray(cells, dtype=np.int64),
    )


def density_warp(n: int, lo: float, hi: float, density, endpoint: bool) -> np.ndarray:
    """n samples from lo to hi spaced inversely to `density(x)` (more samples where it is high)."""
    xs = np.linspace(lo, hi, 4097)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density(xs[1:]) + density(xs[:-1])) * np.diff(xs))])
    cdf /= cdf[-1]
    targets = np.linspace(0.0, 1.0, n) if endpoint else np.arange(n) / n
    return np.interp(targets, cdf, xs)
