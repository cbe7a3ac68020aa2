"""Training augmentations that keep the input and its targets consistent.

Geometric ones (crop/scale/shift, horizontal mirror) move every map together; photometric ones (colour,
lighting, blur, noise, JPEG re-compression, occluders) touch the RGB only. The mirror is exact for the
targets: a flipped image is the render of the mirrored head, whose head-frame normals have x negated and
whose UVs are reflected about the layout's own mirror axis u = a (u -> 2a - u), computed from the FLAME
UV layout (:func:`p3dmm.flame.mirror.uv_mirror_axis`), not assumed to be 0.5.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges. Set `enabled: false` to switch all of them off.

    Args:
        crop_scale: the crop side as a fraction of the image side, uniform in this range.
        mirror: probability of the horizontal mirror.
        color: strength of brightness/contrast/saturation/hue-ish jitter.
        lighting: strength of a random low-frequency shading gradient on the RGB.
        blur: probability of a Gaussian blur (sigma 0.3-1.5 px).
        noise: probability of sensor noise (sigma up to 4/255).
        jpeg: probability of JPEG re-compression (quality 30-90).
        occluders: probability of 1-3 random occluding shapes on the RGB (targets unchanged).
    """

    enabled: bool = True
    crop_scale: tuple[float, float] = (0.85, 1.0)
    mirror: float = 0.5
    color: float = 0.25
    lighting: float = 0.3
    blur: float = 0.2
    noise: float = 0.3
    jpeg: float = 0.3
    occluders: float = 0.2


def mirror_sample(rgb: np.ndarray, normal: np.ndarray, uv: np.ndarray, masks: np.ndarray,
                  uv_axis: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal mirror of a sample: rgb (H, W, 3), normal (H, W, 3) head frame, uv (H, W, 2) (u, 1 - v),
    masks (H, W, K). Normal x is negated and u -> 2 uv_axis - u on the foreground (masks[..., 0])."""
    rgb, normal, uv, masks = rgb[:, ::-1], normal[:, ::-1].copy(), uv[:, ::-1].copy(), masks[:, ::-1]
    fg = masks[..., 0] > 0
    normal[..., 0] = np.where(fg, -normal[..., 0], normal[..., 0])
    uv[..., 0] = np.where(fg, 2.0 * uv_axis - uv[..., 0], uv[..., 0])
    return np.ascontiguousarray(rgb), normal, uv, np.ascontiguousarray(masks)


def crop_box(rng: np.random.Generator, size: int, scale: tuple[float, float]) -> tuple[int, int, int]:
    """(row0, col0, side) of a random square crop inside a size x size image."""
    side = max(8, round(size * rng.uniform(*scale)))
    return int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1)), side


def resize_nearest(array: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of (H, W, ...) to (size, size, ...) (targets: no mixing across edges)."""
    h, w = array.shape[:2]
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(int), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(int), w - 1)
    return array[rows][:, cols]


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def photometric(rgb: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """RGB-only changes; uint8 in, uint8 out."""
    image = rgb.astype(np.float32) / 255.0
    if config.color > 0:
        c = config.color
        image = image * rng.uniform(1 - c, 1 + c)  # brightness
        mean = image.mean()
        image = (image - mean) * rng.uniform(1 - c, 1 + c) + mean  # contrast
        grey = image.mean(axis=2, keepdims=True)
        image = (image - grey) * rng.uniform(1 - c, 1 + c) + grey  # saturation
        image = image * (1 + rng.uniform(-c / 3, c / 3, 3))  # colour cast
    if config.lighting > 0:
        h, w = image.shape[:2]
        direction = rng.normal(size=2)
        ramp = (np.arange(h)[:, None] / h - 0.5) * direction[0] + (np.arange(w)[None, :] / w - 0.5) * direction[1]
        image = image * (1 + config.lighting * ramp)[..., None]
    image = np.clip(image, 0, 1)
    if rng.random() < config.noise:
        image = np.clip(image + rng.normal(0, rng.uniform(0, 4 / 255), image.shape), 0, 1)
    out = Image.fromarray(np.rint(image * 255).astype(np.uint8))
    if rng.random() < config.blur:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    if rng.random() < config.occluders:
        draw = ImageDraw.Draw(out)
        size = out.size[0]
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, size, 2)
            rx, ry = rng.uniform(0.05, 0.2, 2) * size
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            box = (x - rx, y - ry, x + rx, y + ry)
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    if rng.random() < config.jpeg:
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=int(rng.integers(30, 91)))
        out = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(out)
