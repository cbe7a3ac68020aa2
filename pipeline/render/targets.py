"""Per-pixel training targets of a FLAME-topology mesh: head-frame normals, FLAME UV, masks, depth.

CPU ray casting through embree (:mod:`p3dmm.flame.render`): the pipeline renders many
non-differentiable targets on cheap workers, where PyTorch3D's CPU rasteriser is ~100x slower. A
test renders the same mesh and camera with PyTorch3D and checks that UV and normals agree, so the
fitting stage (PyTorch3D) sees the same conventions the network was trained on:

- normals: smooth (interpolated vertex) normals, unit length, in the FLAME head frame: the head's
  world rotation (global @ neck) is undone, so a turned head has the same target as a frontal one
  (:func:`p3dmm.flame.render.pixel_normals`, the definition the fitting renders with too);
- uv: FLAME UV per pixel as (u, 1 - v), interpolated per face corner (``ft``), so seams stay sharp;
- mask: the pixel sees the mesh; face_mask: the pixel sees a face of the UV-valid region;
- depth: camera z in metres (inf on background).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.cameras import Cameras
from p3dmm.flame.render import RayCaster, RayHits, interpolate, pixel_normals

UV_REGION_MASKS = ("face", "forehead", "nose", "lips", "eye_region", "left_ear", "right_ear")
"""FLAME mask regions whose UV is a training target (the face and ears; never the eyeballs)."""
UV_REGION_EXCLUDE = ("left_eyeball", "right_eyeball")


@dataclass(frozen=True)
class TargetMaps:
    """One view's targets, (H, W, ...) numpy arrays."""

    normal: np.ndarray  # (H, W, 3) float32 unit vectors, head frame; 0 on background
    uv: np.ndarray  # (H, W, 2) float32 (u, 1 - v) in [0, 1]; 0 on background
    mask: np.ndarray  # (H, W) bool
    face_mask: np.ndarray  # (H, W) bool, subset of mask
    depth: np.ndarray  # (H, W) float32 metres, inf on background


def uv_region_faces(assets: FlameAssets, include: tuple[str, ...] = UV_REGION_MASKS,
                    exclude: tuple[str, ...] = UV_REGION_EXCLUDE) -> np.ndarray:
    """(F,) bool: faces whose three vertices lie in the UV-valid region (masks `include` minus `exclude`)."""
    num_v = assets.model.num_vertices
    keep = np.zeros(num_v, bool)
    present = [name for name in include if name in assets.masks]
    if not present:
        raise ValueError(f"uv_region_faces: the FLAME folder has none of the masks {include}; need FLAME_masks.pkl")
    for name in present:
        keep[np.asarray(assets.masks[name], np.int64)] = True
    for name in exclude:
        if name in assets.masks:
            keep[np.asarray(assets.masks[name], np.int64)] = False
    return keep[assets.model.faces].all(axis=1)


def uv_map(hits: RayHits, vt: np.ndarray, ft: np.ndarray) -> np.ndarray:
    """(H, W, 2) float32 (u, 1 - v), interpolated per face corner (``ft``) so UV seams do not smear."""
    flipped = np.asarray(vt, np.float32).copy()
    flipped[:, 1] = 1.0 - flipped[:, 1]  # (u, 1 - v) is affine in v, so flip the corners, not the pixels
    return interpolate(hits, flipped, ft)


def render_targets(caster: RayCaster, camera: Cameras, head_rotation: np.ndarray, vt: np.ndarray,
                   ft: np.ndarray, region_faces: np.ndarray) -> TargetMaps:
    """All targets of one camera (batch of one) for the mesh held by `caster` (FLAME topology)."""
    hits = caster.cast(camera)
    mask = hits.face_id >= 0
    face_mask = np.zeros_like(mask)
    face_mask[mask] = region_faces[hits.face_id[mask]]
    return TargetMaps(
        normal=pixel_normals(hits, caster.vertex_normals, caster.faces, head_rotation).astype(np.float32),
        uv=uv_map(hits, vt, ft),
        mask=mask,
        face_mask=face_mask,
        depth=hits.depth.astype(np.float32),
    )
