"""Tiny shards rendered straight from a 1000-vertex synthetic FLAME, and a tiny network config."""

from __future__ import annotations

import pytest

from p3dmm.flame.synth import write_synthetic_flame
from p3dmm.training.network import NetworkConfig
from p3dmm.training.synthetic import write_flame_shards

TINY = NetworkConfig(backbone="vit_small_patch14_dinov2", output_size=32, outputs=("normal", "uv"),
                     shared_backbone=True, head_width=32, head_depth=1, head_heads=2,
                     backbone_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})

TINY_ARGS = ["--model.network.backbone", "vit_small_patch14_dinov2", "--model.network.output_size", "32",
             "--model.network.outputs", "[normal, uv]", "--model.network.shared_backbone", "true",
             "--model.network.head_width", "32", "--model.network.head_depth", "1", "--model.network.head_heads", "2",
             "--model.network.backbone_kwargs", "{depth: 1, embed_dim: 32, num_heads: 2}",
             "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--data.batch_size", "2", "--data.num_workers", "1",
             "--data.shuffle_buffer", "4", "--model.warmup_steps", "2", "--model.panels_every", "0",
             "--trainer.log_every_n_steps", "1"]


@pytest.fixture(scope="session")
def flame_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flame")
    write_synthetic_flame(folder, n_vertices=1000, seed=5)
    return folder


@pytest.fixture(scope="session")
def shards(tmp_path_factory, flame_dir):
    """3 train shards (uneven over 2 ranks) of 4 samples, 1 val shard."""
    out = tmp_path_factory.mktemp("train_shards")
    write_flame_shards(out, flame_dir, train_subjects=3, val_subjects=1, views=4, size=32, samples_per_shard=4)
    return out
