"""Losses and metrics of the normal and UV priors (pure tensor functions).

Shapes: pred/target (B, C, H, W); mask, face (B, H, W) float in {0, 1}.
"""

from __future__ import annotations

import torch

ANGLE_BINS = torch.linspace(0.0, 180.0, 721)  # 0.25 deg
UV_PX_BINS = torch.linspace(0.0, 64.0, 641)  # 0.1 px at 512 px, last bin catches the overflow
UV_METRIC_SIZE = 512


def masked_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(w |pred - target|) / (C sum(w)): the L1 per supervised pixel and channel (0 when w is all zero)."""
    per_pixel = (pred - target).abs().sum(dim=1)
    return (weight * per_pixel).sum() / (pred.shape[1] * weight.sum()).clamp(min=1.0)


def normal_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_l1(pred, target, mask)


def uv_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, face: torch.Tensor,
            face_weight: float = 1.2, other_weight: float = 0.2) -> torch.Tensor:
    """UV pixels in the face region weigh `face_weight`, other foreground pixels `other_weight` (paper)."""
    return masked_l1(pred, target, mask * (face * face_weight + (1 - face) * other_weight))


def angular_error_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, H, W) angle between unit normals, degrees."""
    cos = (torch.nn.functional.normalize(pred, dim=1) * target).sum(dim=1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def uv_error_px(pred: torch.Tensor, target: torch.Tensor, size: int = UV_METRIC_SIZE) -> torch.Tensor:
    """(B, H, W) UV distance in pixels of a size x size UV map."""
    return (pred - target).norm(dim=1) * size


def histogram(values: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Counts of `values` (1-D) in the half-open bins [bins[k], bins[k+1]); the last bin takes the overflow."""
    values = values[torch.isfinite(values)].float()
    idx = torch.bucketize(values.clamp(max=float(bins[-1]) - 1e-6), bins.to(values.device), right=True) - 1
    return torch.bincount(idx.clamp(0, len(bins) - 2), minlength=len(bins) - 1).double()


def quantile_from_histogram(counts: torch.Tensor, bins: torch.Tensor, q: float) -> float:
    """q-quantile from histogram counts (linear inside the bin); NaN when empty."""
    total = counts.sum()
    if total <= 0:
        return float("nan")
    cum = torch.cumsum(counts, 0)
    k = int(torch.searchsorted(cum, q * total).clamp(max=len(counts) - 1))
    before = float(cum[k - 1]) if k > 0 else 0.0
    frac = (float(q * total) - before) / max(float(counts[k]), 1e-12)
    return float(bins[k] + frac * (bins[k + 1] - bins[k]))


def fraction_below(counts: torch.Tensor, bins: torch.Tensor, threshold: float) -> float:
    """Share of values below `threshold` (a bin edge), in percent."""
    total = counts.sum()
    if total <= 0:
        return float("nan")
    k = int(torch.searchsorted(bins, torch.tensor(threshold, dtype=bins.dtype)))
    return float(counts[:k].sum() / total * 100.0)
