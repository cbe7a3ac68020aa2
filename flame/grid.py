"""Contact sheets of images with small labels, for previews and reports, and atomic PNG writing."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_write

_LABEL_SIZE = 11


def _check_image(index: int, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image_grid: images[{index}] must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
    return image


def image_grid(
    images: Sequence[np.ndarray],
    ncols: int,
    labels: Sequence[str] | None = None,
    pad: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
    text_color: tuple[int, int, int] = (20, 20, 20),
) -> np.ndarray:
    """Tile images row-major into one image, each cell with an optional label strip above it.

    Cells are as large as the largest image; smaller images sit at the cell's top-left. Labels are
    drawn with PIL's default font in a strip above the image, so they never cover pixels.

    Args:
        images: N >= 1 arrays (H_k, W_k, 3) uint8 RGB.
        ncols: columns (>= 1); rows = ceil(N / ncols).
        labels: None, or N strings.
        pad: pixels of ``background`` between cells and around the border.

    Returns:
        (H_grid, W_grid, 3) uint8 RGB.
    """
    if len(images) == 0:
        raise ValueError("image_grid: images is empty; pass at least one (H, W, 3) uint8 image")
    if int(ncols) < 1 or int(pad) < 0:
        raise ValueError(f"image_grid: need ncols >= 1 and pad >= 0, got ncols={ncols}, pad={pad}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"image_grid: {len(labels)} labels for {len(images)} images")
    arrays = [_check_image(k, im) for k, im in enumerate(images)]
    ncols = min(int(ncols), len(arrays))
    nrows = -(-len(arrays) // ncols)
    cell_h = max(a.shape[0] for a in arrays)
    cell_w = max(a.shape[1] for a in arrays)

    font = ImageFont.load_default(size=_LABEL_SIZE) if labels is not None else None
    label_h = 0
    if font is not None:
        label_h = max(font.getbbox(str(text) or " ")[3] for text in labels) + 3

    step_y, step_x = cell_h + label_h + pad, cell_w + pad
    canvas = Image.new("RGB", (pad + ncols * step_x, pad + nrows * step_y), tuple(background))
    draw = ImageDraw.Draw(canvas)
    for k, array in enumerate(arrays):
        row, col = divmod(k, ncols)
        x0, y0 = pad + col * step_x, pad + row * step_y
        if font is not None:
            draw.text((x0 + 1, y0), str(labels[k]), fill=tuple(text_color), font=font)
        canvas.paste(Image.fromarray(array), (x0, y0 + label_h))
    return np.asarray(canvas)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an image as PNG atomically (temporary file in the same folder, then rename).

    Args:
        path: destination; its folder must exist.
        image: (H, W, 3) or (H, W, 4) uint8 RGB(A), (H, W) uint8 grey, or (H, W) uint16 grey
            (16-bit PNG, e.g. quantised UV targets that need more than 8 bits).
    """
    image = np.asarray(image)
    ok = (image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)))) or (
        image.dtype == np.uint16 and image.ndim == 2
    )
    if not ok:
        raise ValueError(
            f"save_png: {path}: need (H, W, 3|4) or (H, W) uint8, or (H, W) uint16; got {image.dtype} {image.shape}"
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
