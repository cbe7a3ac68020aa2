"""Real views: calibrated photos undistorted and cropped around the face in one resampling step.

A crop is a new pinhole camera (square, `size` pixels) looking through the photo's own lens: each
crop pixel is mapped to normalised coordinates by the crop's intrinsics, through the lens distortion
(OpenCV radial-tangential), to the photo's pixels, and sampled bilinearly after a blur that matches
the downscale (no aliasing). The targets are then ray cast in exactly that pinhole camera, so photo
and targets line up pixel for pixel.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.ndimage import gaussian_filter, map_coordinates

from p3dmm.flame.scan import ScanError, read_member


def distort_points(xy: np.ndarray, dist: Sequence[float]) -> np.ndarray:
    """OpenCV radial-tangential model on normalised coordinates (P, 2): (k1, k2, p1, p2[, k3])."""
    if len(dist) == 0:
        return xy
    k1, k2, p1, p2 = (float(d) for d in dist[:4])
    k3 = float(dist[4]) if len(dist) > 4 else 0.0
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd, yd], axis=1)


def undistort_points(xy_d: np.ndarray, dist: Sequence[float], iterations: int = 20) -> np.ndarray:
    """Invert :func:`distort_points` by fixed-point iteration (enough for photographic lenses)."""
    xy = xy_d.copy()
    for _ in range(iterations):
        xy = xy + (xy_d - distort_points(xy, dist))
    return xy


def read_image(spec: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a file or ``"<zip>::<member>"``; ScanError naming it when unreadable."""
    spec = str(spec)
    try:
        if "::" in spec:
            data = read_member(spec)
        else:
            with open(spec, "rb") as f:
                data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError as err:
        raise ScanError(f"{spec}: photo not found") from err
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ScanError(f"{spec}: cannot decode photo ({type(err).__name__}: {err})") from err


def face_crop_intrinsics(K: np.ndarray, R: np.ndarray, t: np.ndarray, points: np.ndarray, size: int,
                         fill: float) -> np.ndarray:
    """(3, 3) intrinsics of a square `size` crop, same rotation/centre as (K, R, t), centred on the
    projected bounding box of `points` (P, 3 world) whose larger side covers `fill` of the crop."""
    cam = points @ R.T + t
    if (cam[:, 2] <= 0).any():
        raise ValueError("face_crop_intrinsics: some face points are behind the camera")
    xy = cam[:, :2] / cam[:, 2:3]  # normalised pinhole coordinates
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    centre = (lo + hi) / 2
    half = max(*(hi - lo)) / 2 / fill  # normalised half-side of the crop
    f = (size / 2) / half
    Kc = np.zeros((3, 3))
    Kc[0, 0] = Kc[1, 1] = f
    Kc[0, 2] = (size - 1) / 2 - f * centre[0]
    Kc[1, 2] = (size - 1) / 2 - f * centre[1]
    Kc[2, 2] = 1.0
    del K  # the crop's scale comes from the face, not from the photo's focal length
    return Kc


def resample_photo(photo: np.ndarray, K: np.ndarray, dist: Sequence[float], K_crop: np.ndarray,
                   size: int, fill_value: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Undistort + crop: (size, size, 3) uint8 and (size, size) bool `inside` (sampled within the photo)."""
    jj, ii = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    xy = np.stack([(jj.ravel() - K_crop[0, 2]) / K_crop[0, 0], (ii.ravel() - K_crop[1, 2]) / K_crop[1, 1]], axis=1)
    xy_d = distort_points(xy, dist)
    cols = xy_d[:, 0] * K[0, 0] + K[0, 2]
    rows = xy_d[:, 1] * K[1, 1] + K[1, 2]
    height, width = photo.shape[:2]
    inside = (rows > -0.5) & (rows < height - 0.5) & (cols > -0.5) & (cols < width - 0.5)
    scale = K[0, 0] / K_crop[0, 0]  # photo pixels per crop pixel
    image = photo.astype(np.float32)
    if scale > 1.2:
        sigma = 0.5 * np.sqrt(scale**2 - 1.0)
        image = gaussian_filter(image, sigma=(sigma, sigma, 0))
    out = np.stack([map_coordinates(image[..., c], [rows, cols], order=1, cval=fill_value) for c in range(3)],
                   axis=1)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(size, size, 3)
    return out, inside.reshape(size, size)
