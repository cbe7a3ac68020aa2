"""The training sample schema: encoding to WebDataset members, decoding, and validation.

One sample = one view of one registered scan, stored as tar members ``<key>.<ext>`` (see
docs/shards.md for the full table):

- ``rgb.jpg``     input photo or render, 8-bit sRGB JPEG
- ``normal.png``  head-frame unit normals, 8-bit RGB PNG, n = png / 255 * 2 - 1 (0 on background)
- ``uv.png``      FLAME (u, 1 - v), 16-bit grey PNG of shape (2H, W): rows [0, H) u, rows [H, 2H) 1 - v,
                  value / 65535 (1.5e-5 steps: 0.008 px at 512 px)
- ``mask.png``    8-bit grey bit flags: 1 FLAME foreground, 2 UV-valid face region, 4 hidden behind scan
                  clutter (hair, hands, torso in front of the FLAME surface), 8 outside the photo
- ``depth.png``   camera z, 16-bit grey PNG, units of 0.1 mm (0 = background)
- ``meta.json``   scan, view, camera (K, R, t in the FLAME frame), FLAME params, appearance

Every member decodes with plain PIL / json, so shards are readable with ``webdataset`` and ``tar``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

SCHEMA_VERSION = 1
"""Written to index.json; readers refuse shards of another version."""
MEMBERS = ("rgb.jpg", "normal.png", "uv.png", "mask.png", "depth.png", "meta.json")
FOREGROUND, FACE, OCCLUDED, OUTSIDE = 1, 2, 4, 8
DEPTH_UNIT_M = 1e-4
UV_SCALE = 65535.0
JPEG_QUALITY = 92


class SampleError(ValueError):
    """A sample that does not follow the schema. The message names the sample key and the member."""


@dataclass
class Sample:
    """One decoded sample; (H, W, ...) numpy arrays."""

    key: str
    rgb: np.ndarray  # (H, W, 3) uint8
    normal: np.ndarray  # (H, W, 3) float32 in [-1, 1]
    uv: np.ndarray  # (H, W, 2) float32 in [0, 1]
    flags: np.ndarray  # (H, W) uint8 bit flags
    depth: np.ndarray | None  # (H, W) float32 metres, 0 on background
    meta: dict

    @property
    def mask(self) -> np.ndarray:
        """Pixels to supervise: FLAME foreground, not hidden behind clutter, inside the photo."""
        return (self.flags & FOREGROUND).astype(bool) & ~(self.flags & (OCCLUDED | OUTSIDE)).astype(bool)

    @property
    def face_mask(self) -> np.ndarray:
        """UV-valid face region among :attr:`mask`."""
        return self.mask & (self.flags & FACE).astype(bool)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def encode_flags(mask: np.ndarray, face_mask: np.ndarray, occluded: np.ndarray | None = None,
                 outside: np.ndarray | None = None) -> np.ndarray:
    flags = mask.astype(np.uint8) * FOREGROUND | (face_mask & mask).astype(np.uint8) * FACE
    if occluded is not None:
        flags |= (occluded & mask).astype(np.uint8) * OCCLUDED
    if outside is not None:
        flags |= outside.astype(np.uint8) * OUTSIDE
    return flags


def encode_sample(key: str, rgb: np.ndarray, normal: np.ndarray, uv: np.ndarray, flags: np.ndarray,
                  depth: np.ndarray, meta: dict) -> dict[str, bytes]:
    """{member name: bytes} for one sample (member names without the key)."""
    height, width = flags.shape
    if rgb.shape != (height, width, 3) or rgb.dtype != np.uint8:
        raise SampleError(f"{key}: rgb must be ({height}, {width}, 3) uint8, got {rgb.dtype} {rgb.shape}")
    fg = (flags & FOREGROUND).astype(bool)
    normal_q = np.where(fg[..., None], np.rint((np.clip(normal, -1, 1) + 1) * 127.5), 0).astype(np.uint8)
    uv_q = np.where(fg[..., None], np.rint(np.clip(uv, 0, 1) * UV_SCALE), 0).astype(np.uint16)
    depth_q = np.where(fg & np.isfinite(depth), np.rint(np.nan_to_num(depth, posinf=0) / DEPTH_UNIT_M), 0)
    if depth_q.max(initial=0) > 65535:
        raise SampleError(f"{key}: depth {depth[fg].max():.2f} m exceeds the 6.5 m the 16-bit encoding holds")
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG", quality=JPEG_QUALITY)
    return {
        "rgb.jpg": jpeg.getvalue(),
        "normal.png": _png(normal_q),
        "uv.png": _png(np.concatenate([uv_q[..., 0], uv_q[..., 1]], axis=0)),
        "mask.png": _png(flags.astype(np.uint8)),
        "depth.png": _png(depth_q.astype(np.uint16)),
        "meta.json": (json.dumps(meta, sort_keys=True, separators=(",", ":")) + "\n").encode(),
    }


def _image(key: str, name: str, data: bytes, mode: str | None = None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if mode is not None and im.mode != mode:
                raise SampleError(f"{key}: {name} has mode {im.mode}, expected {mode}")
            return np.asarray(im)
    except SampleError:
        raise
    except Exception as e:  # PIL raises many types for broken data
        raise SampleError(f"{key}: {name} does not decode ({type(e).__name__}: {e})") from None


def decode_sample(members: dict[str, bytes], *, depth: bool = True) -> Sample:
    """A :class:`Sample` from tar members (a webdataset sample dict: '__key__' plus 'rgb.jpg', ...).

    `depth=False` skips the depth PNG (the training decode does not need it).
    """
    key = str(members.get("__key__", "?"))
    missing = [m for m in MEMBERS if m not in members and (depth or m != "depth.png")]
    if missing:
        raise SampleError(f"{key}: missing member(s) {', '.join(missing)}")
    rgb = _image(key, "rgb.jpg", members["rgb.jpg"], "RGB")
    height, width = rgb.shape[:2]
    normal_q = _image(key, "normal.png", members["normal.png"], "RGB")
    uv_q = _image(key, "uv.png", members["uv.png"])
    flags = _image(key, "mask.png", members["mask.png"], "L")
    shapes = {"normal.png": (normal_q.shape, (height, width, 3)), "uv.png": (uv_q.shape, (2 * height, width)),
              "mask.png": (flags.shape, (height, width))}
    for name, (got, want) in shapes.items():
        if got != want:
            raise SampleError(f"{key}: {name} is {got}, expected {want} for a {height}x{width} rgb.jpg")
    if uv_q.dtype != np.uint16 and uv_q.dtype.kind not in "iu":
        raise SampleError(f"{key}: uv.png must be 16-bit, got {uv_q.dtype}")
    depth_m = None
    if depth:
        depth_q = _image(key, "depth.png", members["depth.png"])
        if depth_q.shape != (height, width):
            raise SampleError(f"{key}: depth.png is {depth_q.shape}, expected {(height, width)}")
        depth_m = depth_q.astype(np.float32) * DEPTH_UNIT_M
    try:
        meta = json.loads(members["meta.json"])
    except (ValueError, UnicodeDecodeError) as e:
        raise SampleError(f"{key}: meta.json is not valid JSON ({e})") from None
    normal = normal_q.astype(np.float32) / 127.5 - 1.0
    uv = np.stack([uv_q[:height], uv_q[height:]], axis=-1).astype(np.float32) / UV_SCALE
    return Sample(key=key, rgb=rgb, normal=normal, uv=uv, flags=flags, depth=depth_m, meta=meta)


def check_sample(sample: Sample) -> None:
    """Schema checks beyond decoding: normals unit length on the foreground, metadata complete."""
    key = sample.key
    for field in ("scan_id", "dataset", "subject", "split", "camera", "flame"):
        if field not in sample.meta:
            raise SampleError(f"{key}: meta.json lacks '{field}'")
    fg = (sample.flags & FOREGROUND).astype(bool)
    if fg.any():
        length = np.linalg.norm(sample.normal[fg], axis=-1)
        if np.abs(length - 1).max() > 0.02:
            raise SampleError(f"{key}: normal.png has non-unit normals on the foreground "
                              f"(length {length.min():.3f}..{length.max():.3f})")
    if (sample.flags & ~np.uint8(15)).any():
        raise SampleError(f"{key}: mask.png has unknown flag bits")
