"""Per-image fitting outputs: FLAME parameters (json), posed and neutral meshes (.ply), an overlay PNG and
the predicted maps as 16-bit PNGs.

All written atomically under OUT/<image id>.{json,posed.ply,neutral.ply,overlay.png,pred_normal.png,pred_uv.png}.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from p3dmm.fitting.fit import FitResult, fixed_camera
from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.cameras import Cameras
from p3dmm.flame.grid import image_grid, save_png
from p3dmm.flame.mesh import save_mesh
from p3dmm.flame.render import RayCaster, pixel_normals, shade
from p3dmm.flame.rotations import head_rotation


def result_camera(result: FitResult, b: int, size: int) -> Cameras:
    """The fitting camera of image ``b`` (:func:`fixed_camera` with its fitted focal and principal point)."""
    return fixed_camera(1, size, result.focal_px[b : b + 1].double().cpu(),
                        (result.principal_point_px[b : b + 1] - (size - 1) / 2).double().cpu())


def params_dict(result: FitResult, b: int, size: int) -> dict:
    camera = result_camera(result, b, size)
    return {
        "shape": result.shape[b].tolist(), "expression": result.expression[b].tolist(),
        "pose": result.pose[b].tolist(), "translation": result.translation[b].tolist(),
        "camera": {"focal_px": float(result.focal_px[b]), "principal_point_px": result.principal_point_px[b].tolist(),
                   "size": size, "R": camera.R[0].tolist(), "t": camera.t[0].tolist()},
        "losses": result.losses,
    }


def overlay_panel(image: np.ndarray, pred_normal: np.ndarray, result: FitResult, b: int, faces: np.ndarray,
                  size: int) -> np.ndarray:
    """input | fitted mesh over the input | predicted normals | fitted (rendered) normals, (H, W, 3) uint8."""
    from PIL import Image

    cam = result_camera(result, b, size)
    verts = result.vertices[b].double().cpu().numpy()
    caster = RayCaster(verts, faces)
    hits = caster.cast(cam)
    mesh = shade(hits, verts, faces, vertex_colors=np.broadcast_to(np.array([0.85, 0.65, 0.55]), verts.shape))
    base = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    over = base.copy()
    m = hits.face_id >= 0
    over[m] = (0.6 * mesh[m] + 0.4 * base[m]).astype(np.uint8)
    head = head_rotation(result.pose[b].double().cpu()).numpy()
    fitted = pixel_normals(hits, caster.vertex_normals, faces, head)
    fitted_rgb = np.where(m[..., None], np.rint((fitted + 1) * 127.5), 255).astype(np.uint8)
    pn = pred_normal
    if pn.shape[0] != size:
        pn = np.asarray(torch.nn.functional.interpolate(torch.from_numpy(pn).permute(2, 0, 1)[None], size=(size, size),
                                                        mode="bilinear")[0].permute(1, 2, 0))
    pred_rgb = np.rint((np.clip(pn, -1, 1) + 1) * 127.5).astype(np.uint8)
    panels = [base, over, pred_rgb, fitted_rgb]
    if size < 192:  # small rasters: enlarge (nearest) so the panel is readable
        k = -(-192 // size)
        panels = [np.repeat(np.repeat(p, k, axis=0), k, axis=1) for p in panels]
    return image_grid(panels, ncols=4, labels=["input", "fitted FLAME", "predicted normals", "fitted normals"])


def encode_maps(normal: np.ndarray, uv: np.ndarray) -> tuple[bytes, bytes]:
    """16-bit grey PNGs of predicted maps, channels stacked vertically: normals (3H, W) with
    n = value / 65535 * 2 - 1, UV (2H, W) with (u, 1 - v) = value / 65535 (the shards' uv.png encoding)."""
    import io

    from PIL import Image

    def png(channels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.concatenate(list(channels), axis=0).astype(np.uint16)).save(buffer, format="PNG")
        return buffer.getvalue()

    n = np.rint((np.clip(normal, -1, 1) + 1) / 2 * 65535).transpose(2, 0, 1)
    t = np.rint(np.clip(uv, 0, 1) * 65535).transpose(2, 0, 1)
    return png(n), png(t)


def decode_map(path: str | Path, channels: int, signed: bool) -> np.ndarray:
    """(H, W, channels) float map from a file written by `encode_maps`."""
    from PIL import Image

    with Image.open(path) as im:
        stacked = np.asarray(im).astype(np.float64) / 65535
    maps = np.stack(np.split(stacked, channels, axis=0), axis=-1)
    return maps * 2 - 1 if signed else maps


def write_outputs(out: Path, name: str, result: FitResult, b: int, faces: np.ndarray, image: np.ndarray,
                  pred_normal: np.ndarray, size: int, pred_uv: np.ndarray | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if pred_uv is not None:
        normal_png, uv_png = encode_maps(pred_normal, pred_uv)
        atomic_write(out / f"{name}.pred_normal.png", normal_png)
        atomic_write(out / f"{name}.pred_uv.png", uv_png)
    save_mesh(out / f"{name}.posed.ply", result.vertices[b].cpu().numpy(), faces)
    save_mesh(out / f"{name}.neutral.ply", result.neutral[b].cpu().numpy(), faces)
    save_png(out / f"{name}.overlay.png", overlay_panel(image, pred_normal, result, b, faces, size))
    atomic_write(out / f"{name}.json", (json.dumps(params_dict(result, b, size), indent=1) + "\n").encode())
