"""A PNG grid of shard samples for a person to check: RGB | RGB with target UV lines | normals | UV | flags."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from p3dmm.pipeline.shards.format import FACE, FOREGROUND, OCCLUDED, OUTSIDE, Sample
from p3dmm.pipeline.shards.reader import iter_samples, shard_paths


def normal_to_rgb(normal: np.ndarray, mask: np.ndarray) -> np.ndarray:
    image = np.rint((normal + 1) * 127.5).clip(0, 255).astype(np.uint8)
    image[~mask] = 255
    return image


def uv_to_rgb(uv: np.ndarray, mask: np.ndarray, stripes: int = 16) -> np.ndarray:
    """u in red, 1 - v in green, plus thin iso-lines so misalignment is easy to see."""
    image = np.zeros((*uv.shape[:2], 3), np.float64)
    image[..., 0], image[..., 1] = uv[..., 0], uv[..., 1]
    lines = (np.abs(((uv * stripes) % 1.0) - 0.5) > 0.45).any(axis=-1)
    image[..., 2] = 0.35
    image[lines] = 1.0
    image = np.rint(image * 255).astype(np.uint8)
    image[~mask] = 255
    return image


def flags_to_rgb(flags: np.ndarray) -> np.ndarray:
    """Background white, foreground grey, face region green, hidden-by-clutter red, outside-photo blue."""
    image = np.full((*flags.shape, 3), 255, np.uint8)
    image[(flags & FOREGROUND) > 0] = (150, 150, 150)
    image[(flags & FACE) > 0] = (70, 170, 90)
    image[(flags & OCCLUDED) > 0] = (210, 60, 50)
    image[(flags & OUTSIDE) > 0] = (60, 90, 200)
    return image


def overlay_uv_lines(rgb: np.ndarray, uv: np.ndarray, mask: np.ndarray, stripes: int = 16) -> np.ndarray:
    """The input with the target's UV iso-lines drawn on it: shows photo/target alignment at a glance."""
    out = rgb.copy()
    lines = mask & (np.abs(((uv * stripes) % 1.0) - 0.5) > 0.46).any(axis=-1)
    out[lines] = (255, 255, 0)
    return out


def preview_grid(samples: list[Sample]) -> np.ndarray:
    """Rows of RGB | RGB + UV lines | normals | UV | masks, labelled with the sample key."""
    from p3dmm.flame.grid import image_grid

    images, labels = [], []
    for s in samples:
        fg = (s.flags & FOREGROUND) > 0
        images += [s.rgb, overlay_uv_lines(s.rgb, s.uv, s.face_mask), normal_to_rgb(s.normal, fg),
                   uv_to_rgb(s.uv, fg), flags_to_rgb(s.flags)]
        labels += [f"{s.key} ({s.meta.get('kind')}, {s.meta.get('split')})", "input + target UV lines",
                   "normals (head frame)", "UV (u, 1-v)", "mask: face / other / hidden / outside"]
    return image_grid(images, ncols=5, labels=labels)


def write_preview(folder: str | os.PathLike, out: str | os.PathLike, n: int = 16, seed: int = 0) -> Path:
    """A PNG grid of `n` samples spread over the shards (a fixed random pick for a seed)."""
    from p3dmm.flame.grid import save_png

    samples = list(iter_samples(shard_paths(folder), depth=False))
    if not samples:
        raise ValueError(f"{folder}: no readable samples")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(samples), min(n, len(samples)), replace=False))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(out, preview_grid([samples[i] for i in pick]))
    return out
