"""CPU ray casting of triangle meshes with embree (embreex), and simple shading.

Why embree and not PyTorch3D here: the data pipeline renders many non-differentiable targets on
cheap CPU workers, where PyTorch3D's CPU rasteriser takes seconds per view (0.06 target views/s at
512 px against embree's 14-20, bench/render.py) and embree milliseconds. Embree gives the first face hit by each pixel-centre ray with its barycentrics
and distance (float32, on a mesh shifted to its centre: ~1e-7 of its size); only rays inside the
mesh's projected bounding box are cast. Tests check the face ids, depth, UV and normals against
PyTorch3D's rasteriser and an analytic sphere, so targets rendered here match what the fitting renders.

Images are (H, W, ...) numpy arrays; pixel (i, j) is the ray through pixel centre (u, v) = (j, i).
Per-pixel attributes (:func:`interpolate`, :func:`pixel_normals`) are the torch functions of
:mod:`p3dmm.flame.fragments` on a batch of one, which the fitting's PyTorch3D path uses too. Background
depth is ``inf`` (docs/conventions.md): every surface is in front of it, so depth tests need no special case.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import fragments
from .cameras import Cameras, camera_ray_directions
from .mesh import face_normals_np, vertex_normals_np

DEFAULT_LIGHTS = (
    ((-0.45, -0.55, -0.70), 0.65),  # key: upper left, in front
    ((0.75, -0.10, -0.65), 0.30),  # fill: right
    ((0.00, 0.85, -0.50), 0.12),  # bounce: from below
)
"""(direction towards the light in the OpenCV camera frame, intensity) for :func:`shade`."""

DEFAULT_BACKGROUND = (235, 235, 235)
DEFAULT_ALBEDO = (0.78, 0.78, 0.78)


@dataclass(frozen=True)
class RayHits:
    """First hits of one camera's pixel-centre rays.

    Args:
        face_id: (H, W) int64 index of the face hit, -1 on background.
        bary: (H, W, 3) float32 barycentric weights of the face's vertices (faces[face_id]); they sum
            to 1 and lie in [0, 1]; zeros on background.
        depth: (H, W) float32 z of the hit in the camera frame, metres; inf on background.
        front_facing: (H, W) bool, True where the ray sees the outer side of a CCW face; False on
            background.
        ray_dirs: (H, W, 3) float32 unit ray directions, world frame (for shading, grazing masks); zero
            on background.
        cam_R: (3, 3) float64 world-to-camera rotation of the camera that cast the rays.
    """

    face_id: np.ndarray
    bary: np.ndarray
    depth: np.ndarray
    front_facing: np.ndarray
    ray_dirs: np.ndarray
    cam_R: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool, True on foreground pixels."""
        return self.face_id >= 0


def _check_mesh(name: str, verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces)
    if verts.ndim != 2 or verts.shape[1] != 3 or len(verts) == 0:
        raise ValueError(f"{name}: verts must be (V, 3) with V > 0, got {verts.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"{name}: faces must be integer (F, 3) with F > 0, got {faces.dtype} {faces.shape}")
    if faces.min() < 0 or faces.max() >= len(verts):
        raise ValueError(f"{name}: face indices must lie in [0, {len(verts)}), got [{faces.min()}, {faces.max()}]")
    if not np.isfinite(verts).all():
        raise ValueError(f"{name}: verts contain NaN or inf")
    return verts, faces.astype(np.int64)


class RayCaster:
    """An embree scene of one mesh, reusable for many cameras (building the BVH costs ~ a render).

    Args:
        verts: (V, 3) float, metres, world frame.
        faces: (F, 3) int, counter-clockwise seen from outside.

    Raises:
        RuntimeError: embreex is not installed (``trimesh.ray.has_embree`` is False); the numpy
            fallback of trimesh is ~1000x slower, so it is refused rather than used silently.
    """

    def __init__(self, verts: np.ndarray, faces: np.ndarray) -> None:
        try:
            from embreex import rtcore_scene
            from embreex.mesh_construction import TriangleMesh
        except ImportError as e:
            raise RuntimeError("RayCaster: embree is unavailable; install embreex (pip install embreex)") from e

        self.verts, self.faces = _check_mesh("RayCaster", verts, faces)
        # embree works in float32: shift the mesh to its centre so coordinates stay small and precise
        self._origin = self.verts.mean(axis=0)
        self._scene = rtcore_scene.EmbreeScene()
        TriangleMesh(scene=self._scene, vertices=(self.verts - self._origin).astype(np.float32),
                     indices=self.faces.astype(np.int32))
        self._face_normals = face_normals_np(self.verts, self.faces).astype(np.float32)  # outward for CCW faces

    @functools.cached_property
    def vertex_normals(self) -> np.ndarray:
        """(V, 3) float64 area-weighted unit vertex normals of the mesh (:func:`vertex_normals_np`, computed once)."""
        return vertex_normals_np(self.verts, self.faces)

    def cast(self, camera: Cameras) -> RayHits:
        """First hit of every pixel-centre ray of ``camera`` (a batch of one).

        Embree returns the face, the barycentrics (u, v of corners 1 and 2) and the ray distance in float32
        (about 1e-7 of the mesh size): far below a pixel, so targets need no float64 recomputation.
        """
        if not isinstance(camera, Cameras) or camera.batch_size != 1:
            got = camera.batch_size if isinstance(camera, Cameras) else type(camera).__name__
            raise ValueError(f"raycast: camera must be Cameras with batch size 1, got {got}; use cams[i]")
        cam = camera.to(device="cpu", dtype=torch.float64)
        height, width = cam.image_size
        r0, r1, c0, c1 = self._window(cam)
        face_id = np.full((height, width), -1, np.int64)
        bary = np.zeros((height, width, 3), np.float32)
        depth = np.full((height, width), np.inf, np.float32)
        front = np.zeros((height, width), bool)
        ray_dirs = np.zeros((height, width, 3), np.float32)
        if r1 > r0 and c1 > c0:
            # directions with camera z = 1: embree's ray parameter of a hit is its depth
            origins, dirs = camera_ray_directions(cam, 0, window=(r0, r1, c0, c1), dtype=np.float32,
                                                  normalize=False)
            origins -= self._origin.astype(np.float32)
            out = self._scene.run(origins, dirs, output=1)
            ids = out["primID"]
            hit = np.flatnonzero(out["geomID"] >= 0)
            # flat pixel index of every window ray in the full image
            pixel = (np.arange(r0, r1)[:, None] * width + np.arange(c0, c1)[None, :]).ravel()
            if hit.size:
                where = pixel[hit]
                fid = ids[hit].astype(np.int64)
                u, v = out["u"][hit], out["v"][hit]
                b = np.stack([1.0 - u - v, u, v], axis=1).clip(0.0, 1.0)
                b /= b.sum(axis=1, keepdims=True)
                d = dirs[hit]
                face_id.reshape(-1)[where] = fid
                bary.reshape(-1, 3)[where] = b
                depth.reshape(-1)[where] = out["tfar"][hit]
                front.reshape(-1)[where] = np.einsum("ij,ij->i", self._face_normals[fid], d) < 0
                ray_dirs.reshape(-1, 3)[where] = d / np.sqrt(np.einsum("ij,ij->i", d, d))[:, None]
        return RayHits(face_id=face_id, bary=bary, depth=depth, front_facing=front, ray_dirs=ray_dirs,
                       cam_R=cam.R[0].numpy().copy())

    def _window(self, cam: Cameras) -> tuple[int, int, int, int]:
        """Pixel rows/cols that can see the mesh: its projected bounding box plus a pixel, when every vertex
        is in front of the camera (a triangle projects inside its corners' hull); else the whole image.
        Rays outside it cannot hit anything, so they are not cast (about half of a face crop)."""
        height, width = cam.image_size
        K, R, t = cam.K[0].numpy(), cam.R[0].numpy(), cam.t[0].numpy()
        x = self.verts @ R.T + t
        if (x[:, 2] <= 1e-9).any():
            return 0, height, 0, width
        u = x[:, 0] / x[:, 2] * K[0, 0] + K[0, 2]
        v = x[:, 1] / x[:, 2] * K[1, 1] + K[1, 2]
        c0, c1 = int(np.floor(u.min())) - 1, int(np.ceil(u.max())) + 2
        r0, r1 = int(np.floor(v.min())) - 1, int(np.ceil(v.max())) + 2
        return max(r0, 0), min(r1, height), max(c0, 0), min(c1, width)


def raycast(verts: np.ndarray, faces: np.ndarray, camera: Cameras) -> RayHits:
    """Cast one ray per pixel centre of ``camera`` (batch of one) at a mesh and keep the first hit.

    Args:
        verts: (V, 3) float, metres, world frame.
        faces: (F, 3) int, counter-clockwise seen from outside.
        camera: :class:`Cameras` with batch size 1 (``cams[i]`` picks one).

    Returns:
        :class:`RayHits` of shape (H, W). For many cameras on one mesh, build a :class:`RayCaster` once.
    """
    return RayCaster(verts, faces).cast(camera)


def _tensor(array: np.ndarray, dtype: np.dtype | type) -> torch.Tensor:
    """``array`` as a tensor of ``dtype``, sharing its memory when it is C-contiguous and writable (else a copy)."""
    return torch.from_numpy(np.require(array, dtype, ["C", "W"]))


def _fragments(hits: RayHits) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, H, W) face ids and (1, H, W, 3) barycentrics of one cast, as the tensors of :mod:`fragments`."""
    return torch.from_numpy(hits.face_id)[None], torch.from_numpy(hits.bary)[None]


def interpolate(hits: RayHits, per_vertex_attr: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Barycentric interpolation of a per-vertex attribute at every hit (:func:`fragments.interpolate_fragments`).

    Args:
        hits: from :func:`raycast` on a mesh with these ``faces``.
        per_vertex_attr: (V, C) float (normals, UV, colours, ...); per face corner works too, with
            ``faces`` indexing the corners (UV ``ft``).
        faces: (F, 3) int, the faces that were ray cast (or their corner indices).

    Returns:
        (H, W, C) float (at least float32; float64 if the attribute is float64), zeros on background.
    """
    attr = np.asarray(per_vertex_attr)
    faces = np.asarray(faces)
    if attr.ndim != 2:
        raise ValueError(f"interpolate: per_vertex_attr must be (V, C), got {attr.shape}; reshape (V,) to (V, 1)")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"interpolate: faces must be (F, 3), got {faces.shape}")
    if hits.face_id.max(initial=-1) >= len(faces):
        raise ValueError(f"interpolate: hits reference face {hits.face_id.max()} but only {len(faces)} faces given")
    if faces.size and faces.max() >= len(attr):
        raise ValueError(f"interpolate: faces index vertex {faces.max()} but per_vertex_attr has {len(attr)} rows")
    values = _tensor(attr, np.result_type(attr.dtype, np.float32))[None]
    return fragments.interpolate_fragments(values, _tensor(faces, np.int64), *_fragments(hits))[0].numpy()


def pixel_normals(hits: RayHits, vertex_normals: np.ndarray, faces: np.ndarray,
                  head_rotation: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) unit smooth normals of one cast (:func:`fragments.pixel_normals`), 0 on background.

    Args:
        vertex_normals: (V, 3) world-frame vertex normals of the cast mesh (``RayCaster.vertex_normals``).
        faces: (F, 3) int, the faces that were ray cast.
        head_rotation: (3, 3) R_head = R_global @ R_neck for head-frame normals (n_head = R_head^T n_world,
            the training target); None for world-frame normals (shading).

    Returns:
        float in the dtype of ``vertex_normals`` (at least float32).
    """
    normals = np.asarray(vertex_normals)
    values = _tensor(normals, np.result_type(normals.dtype, np.float32))[None]
    rotation = None if head_rotation is None else _tensor(head_rotation, np.float64)[None]
    return fragments.pixel_normals(values, _tensor(faces, np.int64), *_fragments(hits), rotation)[0].numpy()


def shade(
    hits: RayHits,
    verts: np.ndarray,
    faces: np.ndarray,
    vertex_colors: np.ndarray | None = None,
    light_dirs: Sequence[tuple[tuple[float, float, float], float]] = DEFAULT_LIGHTS,
    ambient: float = 0.22,
    specular: float = 0.12,
    shininess: float = 24.0,
    back_face_factor: float = 0.45,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
) -> np.ndarray:
    """Smooth-shaded preview: interpolated vertex normals, Lambert lights + ambient, Blinn specular.

    Lights are fixed to the camera (headlight-style), so every view of a mesh is lit alike.
    Back faces (the ray sees the inside of a CCW face) use the flipped normal and are darkened by
    ``back_face_factor``, which makes holes and flipped faces visible in previews.

    Args:
        hits: from :func:`raycast` on (verts, faces).
        verts: (V, 3) float, the mesh that was ray cast. faces: (F, 3) int.
        vertex_colors: (V, 3) float albedo in [0, 1]; light grey when None.
        light_dirs: (direction towards the light in the OpenCV camera frame, intensity) pairs.
        ambient, specular, shininess: shading constants (colour = albedo (ambient + diffuse) + spec).
        background: RGB uint8 colour of pixels without a hit.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    verts, faces = _check_mesh("shade", verts, faces)
    if vertex_colors is None:
        colors = np.broadcast_to(np.asarray(DEFAULT_ALBEDO, np.float64), verts.shape)
    else:
        colors = np.asarray(vertex_colors, dtype=np.float64)
        if colors.shape != verts.shape:
            raise ValueError(f"shade: vertex_colors must be {verts.shape} floats in [0, 1], got {colors.shape}")
    height, width = hits.face_id.shape
    image = np.empty((height, width, 3), np.uint8)
    image[:] = np.asarray(background, np.uint8)
    mask = hits.face_id >= 0
    if not mask.any():
        return image
    n = pixel_normals(hits, vertex_normals_np(verts, faces), faces)[mask]
    view = -hits.ray_dirs[mask].astype(np.float64)  # towards the camera, world frame
    back = ~hits.front_facing[mask]
    n[back] *= -1.0
    # Keep interpolated normals from facing away at silhouettes (a smooth-shading artefact).
    away = np.einsum("ij,ij->i", n, view) < 0
    n[away] -= 2.0 * np.einsum("ij,ij->i", n[away], view[away])[:, None] * view[away]
    albedo = interpolate(hits, colors, faces)[mask].astype(np.float64)

    diffuse = np.full(len(n), ambient)
    spec = np.zeros(len(n))
    for direction, intensity in light_dirs:
        light = hits.cam_R.T @ np.asarray(direction, np.float64)  # camera frame -> world
        light /= np.linalg.norm(light)
        diffuse += intensity * np.clip((n * light).sum(axis=1), 0.0, None)
        if specular > 0:
            half = light[None, :] + view
            half /= np.maximum(np.linalg.norm(half, axis=1, keepdims=True), 1e-12)
            spec += intensity * np.clip(np.einsum("ij,ij->i", n, half), 0.0, None) ** shininess
    rgb = albedo * diffuse[:, None] + specular * spec[:, None]
    rgb[back] *= back_face_factor
    image[mask] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return image


def render_shaded(
    verts: np.ndarray,
    faces: np.ndarray,
    camera: Cameras,
    vertex_colors: np.ndarray | None = None,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
) -> np.ndarray:
    """Ray cast and shade a mesh for a preview: (H, W, 3) uint8 RGB (see :func:`shade`)."""
    hits = raycast(verts, faces, camera)
    return shade(hits, verts, faces, vertex_colors=vertex_colors, background=background)
