"""Batched inference of the exported priors, with the mirror test-time augmentation.

Each batch also runs horizontally flipped; the flipped predictions are flipped back and un-mirrored
(head-frame normal x negated, UV u -> 2a - u about the layout's mirror axis a) and averaged with the
direct ones. bf16 autocast on GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from p3dmm.training.network import PriorNet


def unmirror(pred: dict[str, torch.Tensor], uv_axis: float) -> dict[str, torch.Tensor]:
    """Predictions of a flipped image -> predictions for the original image (B, C, H, W)."""
    out = {}
    for name, value in pred.items():
        value = value.flip(-1)
        if name == "normal":
            value = torch.cat([-value[:, :1], value[:, 1:]], dim=1)
        elif name == "uv":
            value = torch.cat([2.0 * uv_axis - value[:, :1], value[:, 1:]], dim=1)
        out[name] = value
    return out


@torch.no_grad()
def predict(net: PriorNet, images: torch.Tensor, uv_axis: float | None = None, mirror_tta: bool = True
            ) -> dict[str, torch.Tensor]:
    """images: (B, 3, S, S) float RGB in [0, 1] at any size (resized to the network's input).

    Returns {"normal": (B, 3, M, M) unit, head frame; "uv": (B, 2, M, M) (u, 1 - v)} at the network's map
    size M, float32. `uv_axis` is needed for the mirror TTA of UV (see training.data.mirror_axis_of).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"predict: images must be (B, 3, H, W), got {tuple(images.shape)}")
    size = net.config.input_size
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    device = next(net.parameters()).device
    x = x.to(device)
    use_bf16 = device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        pred = net(x)
        if mirror_tta:
            if "uv" in pred and uv_axis is None:
                raise ValueError("predict: the mirror TTA of UV needs uv_axis (training.data.mirror_axis_of)")
            back = unmirror(net(x.flip(-1)), uv_axis if uv_axis is not None else 0.5)
            pred = {k: (pred[k].float() + back[k].float()) / 2 for k in pred}
    out = {k: v.float() for k, v in pred.items()}
    if "normal" in out:
        out["normal"] = F.normalize(out["normal"], dim=1)
    return out
