"""UV-grid correspondences against the exhaustive nearest-neighbour search, and the mirror TTA."""

from __future__ import annotations

import torch

from p3dmm.fitting.correspondences import find_correspondences
from p3dmm.fitting.priors import unmirror


def _smooth_uv_map(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    maps = []
    for _ in range(b):
        a = torch.rand(4, generator=g)
        u = 0.2 + 0.6 * xx + 0.05 * torch.sin(6 * yy + a[0] * 6)
        v = 0.15 + 0.7 * yy + 0.04 * torch.cos(5 * xx + a[1] * 6)
        maps.append(torch.stack([u, v]))
    return torch.stack(maps)


def test_grid_matches_exhaustive_search():
    b, h, w = 3, 64, 80
    uv = _smooth_uv_map(b, h, w)
    mask = torch.ones(b, h, w, dtype=torch.bool)
    mask[:, :5] = False  # some pixels may not match
    g = torch.Generator().manual_seed(1)
    vertex_uv = 0.1 + 0.8 * torch.rand(500, 2, generator=g)
    corr = find_correspondences(uv, mask, vertex_uv, max_uv_distance=0.01)

    flat = uv.permute(0, 2, 3, 1).reshape(b, -1, 2)
    d = torch.cdist(vertex_uv[None].expand(b, -1, -1), flat)  # (B, V, HW)
    d[~mask.reshape(b, 1, -1).expand_as(d)] = float("inf")
    best_d, best_i = d.min(-1)
    exact_valid = best_d < 0.01
    assert exact_valid.float().mean() > 0.5  # the test exercises both cases
    # same verdicts, and the grid's match is as close as the exhaustive one (to 1e-3 in UV)
    assert (corr.valid == exact_valid).float().mean() > 0.99
    both = corr.valid & exact_valid
    assert (corr.uv_distance[both] - best_d[both]).abs().max() < 1e-3
    same = (corr.pixel[..., 1] * w + corr.pixel[..., 0]).long() == best_i
    assert same[both].float().mean() > 0.9
    # batched equals per image
    single = find_correspondences(uv[1:2], mask[1:2], vertex_uv, max_uv_distance=0.01)
    assert torch.equal(single.pixel[0], corr.pixel[1]) and torch.equal(single.valid[0], corr.valid[1])


def test_unmirror_inverts_a_mirrored_prediction():
    normal = torch.nn.functional.normalize(torch.randn(2, 3, 8, 8), dim=1)
    uv = torch.rand(2, 2, 8, 8)
    axis = 0.47
    flipped = {"normal": torch.cat([-normal[:, :1], normal[:, 1:]], 1).flip(-1),
               "uv": torch.cat([2 * axis - uv[:, :1], uv[:, 1:]], 1).flip(-1)}
    back = unmirror(flipped, axis)
    torch.testing.assert_close(back["normal"], normal)
    torch.testing.assert_close(back["uv"], uv)
