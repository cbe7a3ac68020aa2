"""Vertex-to-pixel correspondences from a predicted UV map, batched and linear in pixels + vertices.

For each FLAME vertex (face and ears, no eyeballs) we want the pixel whose predicted UV is nearest the
vertex's template UV (u, 1 - v). Instead of an all-pairs search, the predicted UVs of every image are
splatted into a G x G grid over UV space, keeping per cell the pixel nearest the cell centre (one
`scatter_reduce`); each vertex then looks at the 3 x 3 cells around its own and takes the nearest of
those candidates. With cells finer than the UV step between neighbouring pixels (G = 2 x map size by
default) almost every cell holds at most one pixel, so this finds the exhaustive search's pixel or one
as close (a test compares them), in O(B (HW + 9V)) time and O(B G^2) memory.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.mirror import mirror_map
from p3dmm.pipeline.render.targets import uv_region_faces


class Correspondences(NamedTuple):
    """pixel: (B, V, 2) float (x = column, y = row) of each vertex's matched pixel, project convention;
    uv_distance: (B, V) float, |predicted uv - template uv| of the match (inf when none); valid: (B, V) bool,
    a match within the UV gate and inside the pixel mask."""

    pixel: torch.Tensor
    uv_distance: torch.Tensor
    valid: torch.Tensor


def uv_grid_splat(uv: torch.Tensor, mask: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image and UV cell, the flat index of the masked pixel nearest the cell centre.

    Args:
        uv: (B, 2, H, W) predicted (u, 1 - v). mask: (B, H, W) bool, pixels allowed to match.
        grid: cells per UV axis.

    Returns:
        best: (B, grid * grid) long flat pixel index (-1 for empty cells); cell_uv: (B, grid * grid, 2) the UV of
        that pixel.
    """
    b, _, h, w = uv.shape
    flat_uv = uv.permute(0, 2, 3, 1).reshape(b, h * w, 2)
    inside = mask.reshape(b, h * w) & (flat_uv >= 0).all(-1) & (flat_uv < 1).all(-1)
    cell_xy = (flat_uv.clamp(0, 1 - 1e-6) * grid).long()
    cell = cell_xy[..., 1] * grid + cell_xy[..., 0]  # (B, HW)
    centre = (cell_xy.float() + 0.5) / grid
    d2 = ((flat_uv - centre) ** 2).sum(-1)
    # key: distance rank first, pixel index second, packed into one float64-exact integer for a scatter-min
    order = torch.argsort(d2, dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=uv.device).expand(b, -1))
    key = torch.where(inside, rank, torch.full_like(rank, h * w))
    best_rank = torch.full((b, grid * grid), h * w, dtype=torch.long, device=uv.device)
    best_rank.scatter_reduce_(1, torch.where(inside, cell, 0), key, reduce="amin", include_self=True)
    empty = best_rank >= h * w
    best = torch.gather(order, 1, best_rank.clamp(max=h * w - 1))
    best = torch.where(empty, torch.full_like(best, -1), best)
    cell_uv = torch.gather(flat_uv, 1, best.clamp(min=0)[..., None].expand(-1, -1, 2))
    return best, cell_uv


def find_correspondences(uv: torch.Tensor, mask: torch.Tensor, vertex_uv: torch.Tensor, max_uv_distance: float = 0.007,
                         grid: int | None = None) -> Correspondences:
    """Nearest predicted-UV pixel for every vertex.

    Args:
        uv: (B, 2, H, W) predicted (u, 1 - v). mask: (B, H, W) bool, pixels allowed to match.
        vertex_uv: (V, 2) template (u, 1 - v) of the vertices to match.
        max_uv_distance: UV gate (Pixel3DMM: 0.007, i.e. 5e-5 squared).
        grid: UV cells per axis (default: twice the map size).
    """
    if uv.ndim != 4 or uv.shape[1] != 2 or mask.shape != (uv.shape[0], *uv.shape[2:]):
        raise ValueError(f"find_correspondences: uv (B, 2, H, W) and mask (B, H, W), got {tuple(uv.shape)}, "
                         f"{tuple(mask.shape)}")
    h, w = uv.shape[-2:]
    grid = grid or max(64, 2 * max(h, w))
    best, cell_uv = uv_grid_splat(uv, mask.bool(), grid)
    vcell = (vertex_uv.clamp(0, 1 - 1e-6) * grid).long()  # (V, 2)
    offsets = torch.tensor([(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], device=uv.device)
    neighbours = vcell[:, None, :] + offsets[None]  # (V, 9, 2)
    ok = ((neighbours >= 0) & (neighbours < grid)).all(-1)
    flat = (neighbours[..., 1] * grid + neighbours[..., 0]).clamp(0, grid * grid - 1)  # (V, 9)
    cand_pix = best[:, flat]  # (B, V, 9)
    cand_uv = cell_uv[:, flat]  # (B, V, 9, 2)
    dist = (cand_uv - vertex_uv[None, :, None, :]).norm(dim=-1)
    dist = torch.where(ok[None] & (cand_pix >= 0), dist, torch.full_like(dist, float("inf")))
    k = dist.argmin(-1, keepdim=True)
    uv_distance = dist.gather(-1, k)[..., 0]
    pix = cand_pix.gather(-1, k)[..., 0]
    pixel = torch.stack([(pix % w).float(), (pix // w).float()], dim=-1)
    valid = torch.isfinite(uv_distance) & (uv_distance < max_uv_distance)
    return Correspondences(pixel=pixel, uv_distance=uv_distance, valid=valid)


def fit_inputs(assets: FlameAssets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices to match (face and ears, no eyeballs), template (u, 1 - v) per vertex, mirror map)."""
    fit_vertices = np.unique(assets.model.faces[uv_region_faces(assets)])
    vertex_uv = np.stack([assets.uv.vertex_uv[:, 0], 1 - assets.uv.vertex_uv[:, 1]], axis=1)
    return fit_vertices, vertex_uv, mirror_map(assets.model.v_template)
