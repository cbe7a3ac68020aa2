"""Per-pixel attributes of a rasterised mesh, the same for both rasterisers of the project.

A rasteriser gives, per pixel p of a batch of images, the face it sees, ``face_id[p]`` (-1 on background),
and the barycentric weights ``bary[p]`` (3, summing to 1) of that face's corners: the embree ray caster
(:mod:`p3dmm.flame.render`: training targets, previews) and PyTorch3D's rasteriser (the fitting on GPU)
both do. Everything drawn from a mesh goes through the two functions here, so targets and fitting agree:

- :func:`interpolate_fragments`: a(p) = sum_k bary[p, k] * a[faces[face_id[p], k]], 0 on background, for
  per-vertex values (faces = mesh faces) or per-corner values (faces = UV faces ``ft``);
- :func:`pixel_normals`: the interpolated vertex normals, normalised, n(p) / max(|n(p)|, NORMAL_EPS), in
  the world frame or in the head frame. Head frame: n_head = R_head^T n_world with R_head = R_global @ R_neck
  (:func:`p3dmm.flame.rotations.head_rotation`), so a turned head has the normals of a frontal one.

Batched first (B images, one face list), torch, differentiable in the values (the fitting's gradients flow
through the interpolated normals).
"""

from __future__ import annotations

import torch

from .mesh import NORMAL_EPS


def _check(values: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor, bary: torch.Tensor) -> None:
    if values.ndim != 3 or face_id.ndim != 3 or values.shape[0] != face_id.shape[0]:
        raise ValueError(f"fragments: values must be (B, V, C) and face_id (B, H, W) with one B, got "
                         f"{tuple(values.shape)} and {tuple(face_id.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3 or bary.shape != (*face_id.shape, 3):
        raise ValueError(f"fragments: faces must be (F, 3) and bary (B, H, W, 3), got {tuple(faces.shape)} "
                         f"and {tuple(bary.shape)}")


def _foreground(face_id: torch.Tensor) -> torch.Tensor:
    """(N,) flat indices (row-major over B, H, W) of the pixels that see the mesh."""
    return (face_id.reshape(-1) >= 0).nonzero()[:, 0]


def _mix(values: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor, bary: torch.Tensor,
         pixels: torch.Tensor) -> torch.Tensor:
    """(N, C) barycentric mix of the corner values at the flat ``pixels``.

    Flat index_select throughout: boolean masks and two-tensor indexing cost several times more on CPU, and the CPU
    target renderer calls this for every view.
    """
    _check(values, faces, face_id, bary)
    batch, num_v, channels = values.shape
    rows = faces.long().index_select(0, face_id.reshape(-1).index_select(0, pixels))  # (N, 3) vertex ids
    if batch > 1:
        rows = rows + (pixels // face_id[0].numel() * num_v)[:, None]  # into values of that pixel's image
    corners = values.reshape(-1, channels).index_select(0, rows.reshape(-1)).view(-1, 3, channels)
    weights = bary.reshape(-1, 3).index_select(0, pixels).to(values.dtype)
    return torch.einsum("nk,nkc->nc", weights, corners)


def _scatter(face_id: torch.Tensor, pixels: torch.Tensor, per_pixel: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) image with the (N, C) values at the flat ``pixels``, zeros elsewhere (differentiable)."""
    out = per_pixel.new_zeros((face_id.numel(), per_pixel.shape[-1])).index_copy(0, pixels, per_pixel)
    return out.view(*face_id.shape, per_pixel.shape[-1])


def interpolate_fragments(values: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor,
                          bary: torch.Tensor) -> torch.Tensor:
    """Barycentric interpolation of per-vertex (or per-corner) values at every pixel.

    Args:
        values: (B, V, C) float, one row per vertex (or per UV corner); the dtype of the result.
        faces: (F, 3) int rows of ``values`` per face, shared by the batch.
        face_id: (B, H, W) int, the face seen by each pixel, -1 on background.
        bary: (B, H, W, 3) float barycentric weights of faces[face_id] (cast to the dtype of ``values``).

    Returns:
        (B, H, W, C) a(p) = sum_k bary[p, k] * values[faces[face_id[p], k]]; 0 on background.
    """
    pixels = _foreground(face_id)
    return _scatter(face_id, pixels, _mix(values, faces, face_id, bary, pixels))


def pixel_normals(vertex_normals: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor, bary: torch.Tensor,
                  head_rotation: torch.Tensor | None = None) -> torch.Tensor:
    """Smooth unit normals per pixel: interpolated vertex normals, normalised, optionally in the head frame.

    n(p) = N(sum_k bary[p, k] * R^T n_world[faces[face_id[p], k]]), N(x) = x / max(|x|, NORMAL_EPS), with R =
    ``head_rotation`` (or the identity). R^T is applied per vertex (row vectors: n @ R) before interpolating:
    it is linear, so the result is the same and cheaper. Background pixels are 0 (not unit).

    Args:
        vertex_normals: (B, V, 3) world-frame unit vertex normals (:func:`p3dmm.flame.mesh.vertex_normals`).
        faces: (F, 3) int, shared. face_id: (B, H, W) int, -1 on background. bary: (B, H, W, 3).
        head_rotation: (B, 3, 3) R_head = R_global @ R_neck, whose columns are the head's axes in world;
            None keeps the world frame (shading).

    Returns:
        (B, H, W, 3) in the dtype of ``vertex_normals``.
    """
    if head_rotation is not None:
        vertex_normals = vertex_normals @ head_rotation.to(vertex_normals.dtype)  # n_head = R^T n (row vectors)
    pixels = _foreground(face_id)
    mixed = _mix(vertex_normals, faces, face_id, bary, pixels)
    return _scatter(face_id, pixels, torch.nn.functional.normalize(mixed, dim=-1, eps=NORMAL_EPS))
