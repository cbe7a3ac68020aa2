"""`flame_jacobian` against autodiff, and the five-point landmark convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import jacfwd

from p3dmm.flame.files import load_assets
from p3dmm.flame.jacobian import flame_jacobian, jacobian_basis
from p3dmm.flame.landmarks import FIVE_POINT_ROWS, five_point_landmarks, five_point_matrix, is_five_point
from p3dmm.flame.model import FLAME
from p3dmm.flame.synth import write_synthetic_flame


@pytest.fixture(scope="module")
def flame(tmp_path_factory) -> FLAME:
    folder = tmp_path_factory.mktemp("flame")
    write_synthetic_flame(folder, n_vertices=600, seed=1, identity="flame")
    return FLAME(load_assets(folder), n_shape=20, n_expression=10, dtype=torch.float64)


def _autodiff(flame: FLAME, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, e = flame.n_shape, flame.n_expression

    def forward(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = flame(shape=v[None, :s], expression=v[None, s : s + e], pose=v[None, s + e : s + e + 15],
                    translation=v[None, s + e + 15 :])
        return out.vertices[0], out.landmarks[0]

    return jacfwd(forward)(x)


@pytest.mark.parametrize("seed", [0, 1])
def test_jacobian_matches_autodiff(flame, seed):
    # an open jaw and a turned neck: the joints move with the identity, so the closed form must carry them
    g = torch.Generator().manual_seed(seed)
    s, e = flame.n_shape, flame.n_expression
    x = torch.randn(s + e + 18, generator=g, dtype=torch.float64)
    x[s + e : s + e + 15] *= 0.3
    x[s + e + 15 :] *= 0.01
    d_verts, d_lmk = _autodiff(flame, x)
    jac = flame_jacobian(flame, x[:s], x[s : s + e], x[s + e : s + e + 15], x[s + e + 15 :])
    assert jac.d_vertices.shape == d_verts.shape
    assert torch.allclose(jac.d_vertices, d_verts, atol=1e-6)  # pose columns are finite differences
    assert torch.allclose(jac.d_landmarks, d_lmk, atol=1e-6)
    rows = torch.tensor([3, 50, 7])
    part = flame_jacobian(flame, x[:s], x[s : s + e], x[s + e : s + e + 15], x[s + e + 15 :],
                          basis=jacobian_basis(flame), rows=rows)
    assert torch.allclose(part.d_vertices, d_verts[rows], atol=1e-6)
    assert torch.equal(part.vertices, jac.vertices)


def test_five_point_counterparts():
    lmk = np.random.default_rng(0).normal(size=(68, 3))
    five = five_point_landmarks(lmk)
    assert is_five_point(five) and not is_five_point(lmk)
    assert np.allclose(five[36], lmk[36:42].mean(axis=0)) and np.allclose(five[42], lmk[42:48].mean(axis=0))
    assert np.allclose(five[[30, 48, 54]], lmk[[30, 48, 54]])
    assert np.isnan(five[0]).all()
    m = five_point_matrix()
    assert np.allclose((m @ lmk)[list(FIVE_POINT_ROWS)], five[list(FIVE_POINT_ROWS)])
