"""Error maps for `p3dmm eval`: one mesh coloured by its distance to the other, next to the other in grey.

Both meshes are drawn in the frame the metrics measured them in (after alignment), from the front of the
face: the view axes come from the aligned prediction's eye and mouth landmarks, so a turned head or a scan
in its scanner's frame still shows its face. Distances map to a perceptual colormap over a fixed scale (so
maps of different images compare), with a colour bar that states it; vertices that were not measured are
drawn dark grey.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from p3dmm.flame.cameras import Cameras, look_at
from p3dmm.flame.grid import image_grid, save_png
from p3dmm.flame.render import RayCaster, shade

SCALE_MM = 5.0
COLORMAP = "viridis"
UNMEASURED = (0.55, 0.55, 0.55)
REFERENCE = (0.78, 0.78, 0.78)
LEGEND_HEIGHT = 78
EYES_MOUTH = (36, 45, 48, 54)
"""iBUG-68 indices: right eye outer corner, left eye outer corner, right and left mouth corners."""


def face_axes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, up) unit vectors of a face from its iBUG-68 landmarks: right points to the subject's left
    (the viewer's right when facing them), up from the mouth to the eyes; orthonormal."""
    r_eye, l_eye, r_mouth, l_mouth = landmarks[list(EYES_MOUTH)]
    right = l_eye - r_eye + l_mouth - r_mouth
    right /= np.linalg.norm(right)
    up = (r_eye + l_eye - r_mouth - l_mouth) / 2
    up -= (up @ right) * right
    return right, up / np.linalg.norm(up)


def _batch(v: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64)[None]


def front_camera(points: np.ndarray, right: np.ndarray, up: np.ndarray, size: int,
                 distance_m: float = 1.0, fill: float = 0.9) -> Cameras:
    """A camera `distance_m` metres in front of `points` (the face: forward = right x up), looking at their
    centre, zoomed so they span `fill` of a `size` x `size` image. Far away, so the view is near-orthographic."""
    basis = np.stack([right, up, np.cross(right, up)])
    local = points @ basis.T
    centre = (local.min(0) + local.max(0)) / 2 @ basis
    eye = centre + basis[2] * distance_m
    rot, t = look_at(_batch(eye), _batch(centre), _batch(up))
    cam = points @ rot[0].numpy().T + t[0].numpy()
    focal = fill * size / 2 / np.abs(cam[:, :2] / cam[:, 2:]).max()
    K = torch.tensor([[[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1]]], dtype=torch.float64)
    return Cameras(K=K, R=rot, t=t, image_size=(size, size))


def distance_colors(distances_mm: np.ndarray, scale_mm: float = SCALE_MM) -> np.ndarray:
    """(V, 3) colours in [0, 1] of per-vertex distances (V,) mm: the colormap over [0, scale_mm] (larger
    distances saturate), UNMEASURED where the distance is NaN."""
    import matplotlib

    d = np.asarray(distances_mm, np.float64)
    rgb = matplotlib.colormaps[COLORMAP](np.clip(np.nan_to_num(d) / scale_mm, 0, 1))[:, :3]
    rgb[~np.isfinite(d)] = UNMEASURED
    return rgb


def render(vertices: np.ndarray, faces: np.ndarray, camera: Cameras, colors: np.ndarray | None = None,
           ambient: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 shaded view; a higher ambient than previews, so shadows do not read as colours."""
    hits = RayCaster(vertices, faces).cast(camera)
    if colors is None:
        colors = np.broadcast_to(np.asarray(REFERENCE), np.shape(vertices))
    return shade(hits, vertices, faces, vertex_colors=colors, ambient=ambient, background=(255, 255, 255))


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def colour_bar(width: int, scale_mm: float = SCALE_MM, caption: str = "distance, mm") -> np.ndarray:
    """(H, width, 3) uint8 legend: the colormap from 0 to `scale_mm` with a tick and a label per mm (at most
    ten ticks), the caption, and a line on saturation and what dark grey means."""
    import matplotlib

    margin, top, bar_h, height = 16, 4, 14, LEGEND_HEIGHT
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    span = width - 2 * margin
    ramp = matplotlib.colormaps[COLORMAP](np.linspace(0, 1, span))[:, :3]
    canvas.paste(Image.fromarray(np.repeat((ramp * 255).astype(np.uint8)[None], bar_h, 0)), (margin, top))
    draw, font = ImageDraw.Draw(canvas), _font(12)
    step = max(1.0, float(np.ceil(scale_mm / 10)))
    for value in np.arange(0, scale_mm + 1e-9, step):
        x = margin + round(value / scale_mm * (span - 1))
        draw.line([(x, top + bar_h), (x, top + bar_h + 4)], fill=(40, 40, 40))
        text = f"{value:g}" + ("+" if value >= scale_mm else "")
        draw.text((x, top + bar_h + 6), text, fill=(20, 20, 20), font=font, anchor="mt")
    note = f"colours saturate at {scale_mm:g} mm; dark grey: not measured"
    draw.text((width / 2, height - 20), caption, fill=(20, 20, 20), font=font, anchor="mb")
    draw.text((width / 2, height - 4), note, fill=(90, 90, 90), font=font, anchor="mb")
    return np.asarray(canvas)


def error_map(coloured: tuple[np.ndarray, np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray],
              camera: Cameras, labels: tuple[str, str], scale_mm: float = SCALE_MM,
              caption: str = "distance, mm") -> np.ndarray:
    """(H, W, 3) uint8: the `coloured` mesh (vertices, faces, per-vertex distances in mm, NaN: not measured)
    and the `reference` mesh (vertices, faces) in grey, side by side from `camera`, over a colour bar."""
    verts, faces, dist_mm = coloured
    panels = [render(verts, faces, camera, distance_colors(dist_mm, scale_mm)), render(*reference, camera)]
    grid = image_grid(panels, ncols=2, labels=list(labels))
    return np.concatenate([grid, colour_bar(grid.shape[1], scale_mm, caption)], axis=0)


def write_error_map(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a map atomically, creating its folder (reports are read while an evaluation runs)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_png(path, image)
