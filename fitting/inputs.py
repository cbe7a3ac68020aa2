"""Fitting inputs: a folder of face images (jpg/png), optionally cropped from a bounding-box file.

A corrupt, truncated, tiny or non-RGB-convertible image raises `ImageError` with its path and the
reason; the batch driver records it and goes on. Crops follow Pixel3DMM's preprocessing: the box made
square about its centre and enlarged x1.42, padded with edge pixels where it leaves the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_SIDE = 32
CROP_SCALE = 1.42


class ImageError(ValueError):
    """An image that cannot be fitted. The message starts with the path."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def image_id(path: Path, root: Path) -> str:
    """A stable id for outputs: the path under the root, without suffix, '/' -> '__'."""
    return str(path.relative_to(root).with_suffix("")).replace(os.sep, "__")


def read_boxes(path: str | os.PathLike | None) -> dict[str, list[float]]:
    """{image file name or relative path: [x0, y0, x1, y1] pixels} from a JSON file (None: no boxes)."""
    if path is None:
        return {}
    try:
        boxes = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read bounding boxes ({e})") from None
    if not isinstance(boxes, dict) or not all(isinstance(v, list) and len(v) == 4 for v in boxes.values()):
        raise ValueError(f"{path}: expected {{image: [x0, y0, x1, y1]}}")
    return boxes


def square_crop(image: np.ndarray, box: list[float], scale: float = CROP_SCALE) -> np.ndarray:
    """The square of side scale * max(w, h) centred on the box, edge-padded outside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"bad box {box}: need x1 > x0 and y1 > y0")
    side = scale * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    side = round(side)
    h, w = image.shape[:2]
    pad = max(0, -left, -top, left + side - w, top + side - h)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else image
    return padded[top + pad : top + pad + side, left + pad : left + pad + side]


def load_image(path: Path, size: int, box: list[float] | None = None, detector=None) -> np.ndarray:
    """(size, size, 3) uint8 RGB of a face image, cropped by `box` when given, else by the face `detector`
    (fitting.detect.FaceDetector) when given, else its centre square; resized to a square."""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise ImageError(f"{path}: not found") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise ImageError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} px is too small (need >= {MIN_SIDE} px)")
    if box is None and detector is not None:
        box = detector.detect_box(path, rgb)  # ImageError "no face found" when there is none
    if box is not None:
        try:
            rgb = square_crop(rgb, box)
        except ValueError as e:
            raise ImageError(f"{path}: {e}") from None
    elif rgb.shape[0] != rgb.shape[1]:
        side = min(rgb.shape[:2])
        top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
        rgb = rgb[top : top + side, left : left + side]  # a face crop as it is: centre square
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.BILINEAR))
