"""Training panels: input | predicted and target normals | angular error | predicted and target UV | UV error."""

from __future__ import annotations

import numpy as np
import torch

from p3dmm.flame.grid import image_grid
from p3dmm.training import objective as O


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def _heat(err: torch.Tensor, vmax: float, mask: torch.Tensor) -> np.ndarray:
    """(H, W) error -> blue..red picture, white outside the mask."""
    t = (err / vmax).clamp(0, 1)
    rgb = torch.stack([t, 1 - (2 * t - 1).abs(), 1 - t], dim=0)
    rgb = torch.where(mask[None] > 0, rgb, torch.ones_like(rgb))
    return _to_uint8(rgb)


def prediction_panel(batch: dict, pred: dict[str, torch.Tensor], rows: int = 2, min_size: int = 128) -> np.ndarray:
    """(H, W, 3) uint8 grid of the first `rows` samples of a batch (cells at least `min_size` px)."""
    images, labels = [], []
    size = batch["mask"].shape[-1]
    for i in range(min(rows, batch["image"].shape[0])):
        mask = batch["mask"][i].float()
        rgb = torch.nn.functional.interpolate(batch["image"][i : i + 1].float(), size=(size, size), mode="bilinear",
                                              align_corners=False)[0]
        images.append(_to_uint8(rgb))
        labels.append(str(batch["key"][i])[:28])
        if "normal" in pred:
            p, t = pred["normal"][i].float(), batch["normal"][i].float()
            err = O.angular_error_deg(p[None], t[None])[0]
            images += [_to_uint8((p + 1) / 2 * mask + (1 - mask)), _to_uint8((t + 1) / 2 * mask + (1 - mask)),
                       _heat(err, 30.0, mask)]
            labels += ["normal: prediction", "normal: target", "angle error 0-30 deg"]
        if "uv" in pred:
            p, t = pred["uv"][i].float(), batch["uv"][i].float()
            face = mask * batch["face"][i].float()
            pad = torch.full_like(p[:1], 0.35)
            images += [_to_uint8(torch.cat([p, pad]) * mask + (1 - mask)), _to_uint8(torch.cat([t, pad]) * mask + (1 - mask)),
                       _heat(O.uv_error_px(p[None], t[None])[0], 20.0, face)]
            labels += ["UV: prediction", "UV: target", "UV error 0-20 px @512"]
    ncols = 1 + 3 * len(pred)
    if size < min_size:
        k = -(-min_size // size)
        images = [np.repeat(np.repeat(im, k, axis=0), k, axis=1) for im in images]
    return image_grid(images, ncols=ncols, labels=labels)
