"""CPU ray casting of triangle meshes with embree (via trimesh + embreex), and simple shading.

Why embree and not PyTorch3D here: the data pipeline renders many non-differentiable targets on
cheap CPU workers, where PyTorch3D's CPU rasteriser takes seconds per view (ARCHITECTURE.md) and
embree milliseconds (a 10k-face mesh at 256x256: ~20 ms per view on one of these cores). Embree gives
the first face hit by each pixel-centre ray; barycentrics and depth are then recomputed in float64
against that one triangle (Moller-Trumbore), so they are exact up to double precision rather than
embree's float32. A test checks that the face ids agree with PyTorch3D's rasteriser for the same
:class:`~p3dmm.flame.cameras.Cameras`, so targets rendered here match what the fitting renders.

Images are (H, W, ...) numpy arrays; pixel (i, j) is the ray through pixel centre (u, v) = (j, i).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from .cameras import Cameras, camera_ray_directions
from .mesh import vertex_normals

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
        ray_dirs: (H, W, 3) float32 unit ray directions, world frame (for shading, grazing masks).
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
        if not trimesh.ray.has_embree:
            raise RuntimeError("RayCaster: embree is unavailable; install embreex (pip install embreex)")
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        self.verts, self.faces = _check_mesh("RayCaster", verts, faces)
        mesh = trimesh.Trimesh(vertices=self.verts, faces=self.faces, process=False, validate=False)
        self._intersector = RayMeshIntersector(mesh)
        self._tri = self.verts[self.faces]  # (F, 3, 3)

    def cast(self, camera: Cameras) -> RayHits:
        """First hit of every pixel-centre ray of ``camera`` (a batch of one)."""
        if not isinstance(camera, Cameras) or camera.batch_size != 1:
            got = camera.batch_size if isinstance(camera, Cameras) else type(camera).__name__
            raise ValueError(f"raycast: camera must be Cameras with batch size 1, got {got}; use cams[i]")
        cam = camera.to(device="cpu", dtype=torch.float64)
        height, width = cam.image_size
        origins, dirs = camera_ray_directions(cam, 0)
        face_id = np.asarray(self._intersector.intersects_first(origins, dirs), dtype=np.int64)

        n = height * width
        bary = np.zeros((n, 3), np.float32)
        depth = np.full(n, np.inf, np.float32)
        front = np.zeros(n, bool)
        hit = np.flatnonzero(face_id >= 0)
        if hit.size:
            R = cam.R[0].numpy()
            b, ray_t, facing = _intersect_triangles(self._tri[face_id[hit]], origins[hit], dirs[hit])
            bary[hit] = b
            # origins are the camera centre, so z_cam of the hit is ray_t times the ray's z_cam slope.
            depth[hit] = ray_t * (dirs[hit] * R[2]).sum(axis=1)
            front[hit] = facing
        return RayHits(
            face_id=face_id.reshape(height, width),
            bary=bary.reshape(height, width, 3),
            depth=depth.reshape(height, width),
            front_facing=front.reshape(height, width),
            ray_dirs=dirs.astype(np.float32).reshape(height, width, 3),
            cam_R=cam.R[0].numpy().copy(),
        )


def _intersect_triangles(
    tri: np.ndarray, origins: np.ndarray, dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moller-Trumbore of N rays against their own triangle, float64.

    Args:
        tri: (N, 3, 3) triangle corners; origins, dirs: (N, 3).

    Returns:
        bary (N, 3) clipped to [0, 1] and renormalised (embree's float32 test may accept a hit a
        hair outside an edge), ray parameter t (N,) along ``dirs``, front-facing (N,) bool.
    """
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    e1, e2 = b - a, c - a
    p = np.cross(dirs, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > 1e-300
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origins - a
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    v = np.einsum("ij,ij->i", dirs, q) * inv
    t = np.einsum("ij,ij->i", e2, q) * inv
    bary = np.stack([1.0 - u - v, u, v], axis=1)
    if not ok.all():  # a ray in the triangle's plane has no defined intersection: use the centroid
        bad = ~ok
        bary[bad] = 1.0 / 3.0
        t[bad] = np.einsum("ij,ij->i", tri[bad].mean(axis=1) - origins[bad], dirs[bad])
    bary = np.clip(bary, 0.0, 1.0)
    bary /= bary.sum(axis=1, keepdims=True)
    # det = e1 . (d x e2) = -d . (e1 x e2): positive when the ray meets the outward (CCW) normal.
    return bary, t, det > 0


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


def interpolate(hits: RayHits, per_vertex_attr: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Barycentric interpolation of a per-vertex attribute at every hit.

    Args:
        hits: from :func:`raycast` on a mesh with these ``faces``.
        per_vertex_attr: (V, C) float (normals, UV, colours, ...).
        faces: (F, 3) int, the faces that were ray cast.

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
    dtype = np.result_type(attr.dtype, np.float32)
    height, width = hits.face_id.shape
    out = np.zeros((height, width, attr.shape[1]), dtype)
    mask = hits.face_id >= 0
    corners = attr[faces[hits.face_id[mask]]].astype(dtype)  # (N, 3, C)
    out[mask] = np.einsum("nk,nkc->nc", hits.bary[mask].astype(dtype), corners)
    return out


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
    normals = vertex_normals(torch.from_numpy(verts)[None], torch.from_numpy(faces))[0].numpy()

    height, width = hits.face_id.shape
    image = np.empty((height, width, 3), np.uint8)
    image[:] = np.asarray(background, np.uint8)
    mask = hits.face_id >= 0
    if not mask.any():
        return image
    n = interpolate(hits, normals, faces)[mask].astype(np.float64)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
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
