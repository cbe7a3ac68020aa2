"""A one-picture check of a FLAME model: template, random identities, poses and expressions, shaded.

Works the same on real FLAME files and on the synthetic head. Eyeballs (white, with a dark iris
around the gaze axis) and lips are tinted from the region masks when the folder has them, so a
glance shows whether the eyes, mouth and jaw are where they should be.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.cameras import Cameras, intrinsics_from_fov, look_at
from p3dmm.flame.grid import image_grid, save_png
from p3dmm.flame.model import FLAME
from p3dmm.flame.render import render_shaded

SKIN = (0.86, 0.71, 0.62)


def region_colors(assets: FlameAssets) -> np.ndarray:
    """(V, 3) albedo: skin, eyeballs white with a dark iris on the +z gaze axis, lips reddish."""
    v = assets.model.v_template
    colors = np.tile(np.asarray(SKIN), (len(v), 1))
    for name in ("left_eyeball", "right_eyeball"):
        idx = assets.masks.get(name)
        if idx is None or len(idx) == 0:
            continue
        centre = v[idx].mean(axis=0)
        radius = np.linalg.norm(v[idx] - centre, axis=1).max()
        colors[idx] = (0.93, 0.93, 0.92)
        along_gaze = (v[idx, 2] - centre[2]) / max(radius, 1e-9)
        colors[idx[along_gaze > 0.85]] = (0.25, 0.33, 0.45)
        colors[idx[along_gaze > 0.96]] = (0.05, 0.05, 0.06)
    lips = assets.masks.get("lips")
    if lips is not None and len(lips):
        colors[lips] = (0.78, 0.47, 0.45)
    return colors


def preview_camera(template: np.ndarray, size: int, yaw_deg: float = 25.0, pitch_deg: float = 8.0) -> Cameras:
    """A 3/4 portrait camera framing the head (bounding box of the template)."""
    lo, hi = template.min(axis=0), template.max(axis=0)
    target = torch.tensor((lo + hi) / 2, dtype=torch.float32)[None]
    extent = float(np.max(hi - lo))
    fov = 22.0
    dist = 0.62 * extent / np.tan(np.radians(fov / 2))
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    offset = torch.tensor(
        [np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)], dtype=torch.float32
    )
    R, t = look_at(target + dist * offset[None], target, torch.tensor([[0.0, 1.0, 0.0]]))
    return Cameras(K=intrinsics_from_fov(fov, (size, size)), R=R, t=t, image_size=(size, size))


def preview_grid(
    assets: FlameAssets,
    n_identities: int = 6,
    n_expressions: int = 24,
    size: int = 224,
    seed: int = 0,
    expression_names: list[str] | None = None,
    ncols: int = 8,
) -> np.ndarray:
    """(H, W, 3) uint8 grid: template, poses (jaw open, eyes turned, head turned), random identities
    (shape ~ N(0, 1) sigma), then expression k at +2.5 sigma for the first `n_expressions`."""
    flame = FLAME(assets)
    n_expressions = min(n_expressions, flame.n_expression)
    rng = np.random.default_rng(seed)
    cases: list[tuple[str, dict[str, torch.Tensor]]] = [("template", {})]
    pose = torch.zeros(3, 15)
    pose[0, 6] = 0.35  # jaw open
    pose[1, 9:12] = torch.tensor([0.0, 0.45, 0.0])  # both eyes turned to the subject's left
    pose[1, 12:15] = torch.tensor([0.0, 0.45, 0.0])
    pose[2, 3:6] = torch.tensor([0.0, -0.5, 0.0])  # neck turned
    cases += [(name, {"pose": pose[i : i + 1]}) for i, name in enumerate(("jaw open", "eyes left", "neck turn"))]
    for i in range(n_identities):
        shape = torch.zeros(1, flame.n_shape)
        k = min(flame.n_shape, 50)
        shape[0, :k] = torch.from_numpy(rng.standard_normal(k)).float()
        cases.append((f"identity {i + 1}", {"shape": shape}))
    for k in range(n_expressions):
        expr = torch.zeros(1, flame.n_expression)
        expr[0, k] = 2.5
        name = expression_names[k] if expression_names and k < len(expression_names) else f"expr {k}"
        cases.append((f"{k}: {name}", {"expression": expr}))

    colors = region_colors(assets)
    camera = preview_camera(assets.model.v_template, size)
    faces = assets.model.faces
    images, labels = [], []
    with torch.no_grad():
        for label, kwargs in cases:
            verts = flame(**kwargs).vertices[0].double().numpy()
            images.append(render_shaded(verts, faces, camera, vertex_colors=colors))
            labels.append(label)
    return image_grid(images, ncols=ncols, labels=labels)


def write_preview(assets: FlameAssets, out: str | os.PathLike, folder: str | os.PathLike | None = None,
                  **kwargs) -> Path:
    """Render the grid and write it atomically; expression names come from a synthetic folder's info."""
    names = None
    info = Path(folder) / "synthetic.json" if folder is not None else None
    if info is not None and info.is_file():
        names = json.loads(info.read_text()).get("expression_names")
    grid = preview_grid(assets, expression_names=names, **kwargs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(out, grid)
    return out
