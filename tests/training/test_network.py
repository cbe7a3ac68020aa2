"""The prior network: shapes, unit normals, register tokens, clear errors; export round trip."""

from __future__ import annotations

import pytest
import torch

from p3dmm.training.network import NetworkConfig, PriorNet

from .conftest import TINY


def test_shapes_unit_normals_and_register_tokens():
    for backbone in ("vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"):
        net = PriorNet(NetworkConfig(**{**TINY.__dict__, "backbone": backbone})).eval()
        x = torch.rand(2, 3, TINY.input_size, TINY.input_size)
        out = net(x)
        assert out["normal"].shape == (2, 3, 32, 32) and out["uv"].shape == (2, 2, 32, 32)
        torch.testing.assert_close(out["normal"].norm(dim=1), torch.ones(2, 32, 32))
    # the paper's geometry: 448 px input -> 32 x 32 tokens -> 512 px maps
    assert NetworkConfig().input_size == 448 and NetworkConfig().grid == 32


def test_separate_networks_and_errors():
    net = PriorNet(NetworkConfig(**{**TINY.__dict__, "shared_backbone": False}))
    assert set(net.backbones) == {"normal", "uv"}
    with pytest.raises(ValueError, match=r"expected \(B, 3, 28, 28\)"):
        net(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of 16"):
        NetworkConfig(output_size=500)
    with pytest.raises(ValueError, match="outputs"):
        NetworkConfig(outputs=("depth",))
