"""Oracle cues for testing the fitting: ground-truth normal and UV maps of random synthetic heads,
rendered with the fitting camera (no network involved), and the heads themselves."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from p3dmm.fitting.fit import fixed_camera
from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.model import FLAME
from p3dmm.flame.render import RayCaster
from p3dmm.flame.rotations import head_rotation
from p3dmm.pipeline.render.targets import render_targets, uv_region_faces
from p3dmm.pipeline.synth.scans import sample_params


class OracleCues(NamedTuple):
    """pred: {"normal": (B, 3, S, S), "uv": (B, 2, S, S)}; mask: (B, S, S) bool; posed, neutral: (B, V, 3) truth."""

    pred: dict[str, torch.Tensor]
    mask: torch.Tensor
    posed: torch.Tensor
    neutral: torch.Tensor


def oracle_cues(assets: FlameAssets, flame: FLAME, count: int, size: int, focal: float, seed: int = 0,
                global_sigma: float = 0.25, focal_jitter: float = 0.1, shared_shape: bool = False) -> OracleCues:
    """`count` random heads (pose, expression; one identity when shared_shape) seen by the fitting camera
    with a focal length within +-focal_jitter of `focal`."""
    rng = np.random.default_rng(seed)
    region = uv_region_faces(assets)
    shape = sample_params(rng, assets.model.num_shape, assets.model.num_expression)["shape"]
    normals, uvs, masks, posed, neutral = [], [], [], [], []
    for _ in range(count):
        p = sample_params(rng, assets.model.num_shape, assets.model.num_expression)
        if shared_shape:
            p["shape"] = shape
        p["pose"][:3] = rng.normal(0, global_sigma, 3)
        with torch.no_grad():
            verts = flame(**{k: torch.tensor(v, dtype=torch.float32)[None] for k, v in p.items()}).vertices[0]
            neutral.append(flame(shape=torch.tensor(p["shape"], dtype=torch.float32)[None]).vertices[0])
        head = head_rotation(torch.tensor(p["pose"])).numpy()
        f = focal * rng.uniform(1 - focal_jitter, 1 + focal_jitter)
        cam = fixed_camera(1, size, torch.tensor([f], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))
        t = render_targets(RayCaster(verts.double().numpy(), assets.model.faces), cam, head, assets.uv.vt,
                           assets.uv.ft, region)
        normals.append(torch.from_numpy(t.normal).permute(2, 0, 1))
        uvs.append(torch.from_numpy(t.uv).permute(2, 0, 1))
        masks.append(torch.from_numpy(t.mask))
        posed.append(verts)
    return OracleCues({"normal": torch.stack(normals), "uv": torch.stack(uvs)}, torch.stack(masks),
                      torch.stack(posed), torch.stack(neutral))
