"""FLAME landmarks: barycentric points on the mesh, with a jaw contour chosen by head yaw.

The embedding (:class:`p3dmm.flame.assets.LandmarkEmbedding`) gives L static points (51 inner iBUG
points 17..67 for the official file) and 79 rows of 17 contour points (iBUG 0..16), one row per
integer yaw angle; :func:`dynamic_row` picks the row as smplx / FLAME_PyTorch / pixel3dmm do (DECA's
variant lacks a minus sign and is not followed here).

A landmark is a point given by a face and barycentric weights, p = sum_k bary[k] * v[faces[face, k]], in the
frame and units of the vertices; :func:`landmarks_from_barycentric` is the one implementation (the FLAME
forward, registration, synthetic scans and evaluation all go through it; :func:`frontal_landmarks` is its
numpy form for one mesh).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .assets import FlameAssets

NUM_DYNAMIC_ROWS = 79
"""Rows of the dynamic (contour) embedding: yaw 0..39 degrees, then 40..78 for yaw -1..-39."""

NUM_CONTOUR = 17
"""Contour landmarks per row (iBUG 0..16)."""

_MAX_YAW_DEG = 39


def dynamic_row(rot_mats: torch.Tensor) -> torch.Tensor:
    """Row of the dynamic contour embedding for each item, from the global and neck rotations.

    rel = R_global @ R_neck; y = round(min(-atan2(-rel[2, 0], hypot(rel[0, 0], rel[1, 0])) * 180 / pi,
    39)) degrees; row = y if y >= 0, else 39 - y if y >= -39, else 78. A head turned by +20 degrees
    about the model's y axis gives y = -20, row 59; -20 degrees gives row 20. Not differentiable (an
    index).

    Args:
        rot_mats: (B, J >= 2, 3, 3) local joint rotations [global, neck, ...], or (B, 3, 3) rel.

    Returns:
        (B,) int64 rows in [0, 78], same device.
    """
    if not isinstance(rot_mats, torch.Tensor):
        raise TypeError(f"rot_mats: expected a torch.Tensor, got {type(rot_mats).__name__}")
    if rot_mats.dim() == 4 and rot_mats.shape[1] >= 2 and rot_mats.shape[2:] == (3, 3):
        rel = rot_mats[:, 0] @ rot_mats[:, 1]
    elif rot_mats.dim() == 3 and rot_mats.shape[1:] == (3, 3):
        rel = rot_mats
    else:
        raise ValueError(
            f"rot_mats: expected (B, J >= 2, 3, 3) joint rotations or (B, 3, 3) global @ neck, "
            f"got {tuple(rot_mats.shape)}"
        )
    pitch_like = torch.atan2(-rel[:, 2, 0], torch.hypot(rel[:, 0, 0], rel[:, 1, 0]))
    y = torch.round((-pitch_like * (180.0 / math.pi)).clamp(max=_MAX_YAW_DEG)).long()
    negative = torch.where(y < -_MAX_YAW_DEG, torch.full_like(y, 2 * _MAX_YAW_DEG), _MAX_YAW_DEG - y)
    return torch.where(y < 0, negative, y)


def landmarks_from_barycentric(
    vertices: torch.Tensor, faces: torch.Tensor, face_idx: torch.Tensor, bary: torch.Tensor
) -> torch.Tensor:
    """Points given by (face, barycentric coordinates): `sum_i bary[b, l, i] * v[faces[face_idx[b, l], i]]`.

    Args:
        vertices: (B, V, 3) metres.
        faces: (F, 3) int64 vertex indices.
        face_idx: (B, L) int64 face indices, in [0, F).
        bary: (B, L, 3) barycentric coordinates (sum ~ 1), same dtype as vertices.

    Returns:
        (B, L, 3) points, metres, same frame as vertices.
    """
    batch = vertices.shape[0]
    if face_idx.dim() != 2 or face_idx.shape[0] != batch or bary.shape != (*face_idx.shape, 3):
        raise ValueError(
            f"landmarks_from_barycentric: expected face_idx (B={batch}, L) and bary (B, L, 3), "
            f"got {tuple(face_idx.shape)} and {tuple(bary.shape)}"
        )
    corner_idx = faces[face_idx]  # (B, L, 3)
    batch_idx = torch.arange(batch, device=vertices.device)[:, None, None]
    corners = vertices[batch_idx, corner_idx]  # (B, L, 3 corners, 3 coords)
    return (bary[..., None] * corners).sum(-2)


def landmarks_68(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    rot_mats: torch.Tensor,
    static_faces: torch.Tensor,
    static_bary: torch.Tensor,
    dynamic_faces: torch.Tensor,
    dynamic_bary: torch.Tensor,
) -> torch.Tensor:
    """The iBUG-68 landmarks: [contour row chosen by :func:`dynamic_row` (17), static (L = 51)].

    Args:
        vertices: (B, V, 3) posed vertices, metres.
        faces: (F, 3) int64.
        rot_mats: (B, J, 3, 3) local joint rotations [global, neck, ...] used to pose `vertices`.
        static_faces: (L,) int64; static_bary: (L, 3).
        dynamic_faces: (79, 17) int64; dynamic_bary: (79, 17, 3).

    Returns:
        (B, 17 + L, 3) landmarks, metres; (B, 68, 3) for the official embedding.
    """
    face_idx, bary = landmark_barycentrics(rot_mats, static_faces, static_bary, dynamic_faces, dynamic_bary)
    return landmarks_from_barycentric(vertices, faces, face_idx, bary.to(vertices.dtype))


def landmark_barycentrics(
    rot_mats: torch.Tensor, static_faces: torch.Tensor, static_bary: torch.Tensor, dynamic_faces: torch.Tensor,
    dynamic_bary: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (face, barycentric) embedding :func:`landmarks_68` uses for each item: (B, 17 + L) int64 faces
    and (B, 17 + L, 3) coordinates. Landmarks are linear in the vertices through it (Jacobians use it)."""
    batch = rot_mats.shape[0]
    rows = dynamic_row(rot_mats)
    face_idx = torch.cat((dynamic_faces[rows], static_faces.expand(batch, -1)), 1)
    bary = torch.cat((dynamic_bary[rows], static_bary.expand(batch, -1, -1)), 1)
    return face_idx, bary


def frontal_landmarks(assets: FlameAssets, vertices: np.ndarray) -> np.ndarray:
    """The 68 iBUG landmarks of one FLAME-topology mesh through the frontal embedding (``full_faces`` /
    ``full_bary``: the contour of a frontal head, whatever the mesh's pose), in numpy.

    Args:
        vertices: (V, 3) float, any frame and units; the result is in the same.

    Returns:
        (68, 3) in the dtype of ``vertices`` (at least float32).

    Raises:
        ValueError: the assets have no landmark embedding.
    """
    if assets.landmarks is None:
        raise ValueError("frontal_landmarks: these FLAME assets have no landmark embedding")
    emb = assets.landmarks
    verts = torch.tensor(np.asarray(vertices, np.result_type(np.asarray(vertices).dtype, np.float32)))[None]
    faces = torch.tensor(np.asarray(assets.model.faces, np.int64))
    face_idx = torch.tensor(np.asarray(emb.full_faces, np.int64))[None]
    bary = torch.tensor(np.asarray(emb.full_bary)).to(verts.dtype)[None]
    return landmarks_from_barycentric(verts, faces, face_idx, bary)[0].numpy()


FIVE_POINT_ROWS: dict[int, tuple[int, ...]] = {36: tuple(range(36, 42)), 42: tuple(range(42, 48)),
                                               30: (30,), 48: (48,), 54: (54,)}
"""The five-point convention of detected landmarks (a face detector's eye centres, nose tip and mouth
corners) inside a (68, 3) iBUG array: filled row -> the iBUG rows whose mean is its counterpart on a
mesh. Rows 36 and 42 hold the subject's right and left eye centres (no iBUG point: the contour means)."""


def is_five_point(landmarks: np.ndarray) -> bool:
    """Whether (68, 3) landmarks follow :data:`FIVE_POINT_ROWS`: exactly those rows finite."""
    finite = np.nonzero(np.isfinite(np.asarray(landmarks, np.float64)).all(axis=1))[0]
    return set(finite.tolist()) == set(FIVE_POINT_ROWS)


def five_point_matrix() -> np.ndarray:
    """(68, 68) M with M @ landmarks = the five-point counterparts (rows of :data:`FIVE_POINT_ROWS`), zero
    rows elsewhere: linear, so fits map landmark Jacobians through it too."""
    m = np.zeros((68, 68))
    for row, sources in FIVE_POINT_ROWS.items():
        m[row, list(sources)] = 1.0 / len(sources)
    return m


def five_point_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(68, 3) five-point counterparts of a mesh's iBUG landmarks (68, 3), NaN outside the five rows."""
    out = np.full((68, 3), np.nan)
    rows = list(FIVE_POINT_ROWS)
    out[rows] = (five_point_matrix() @ np.asarray(landmarks, np.float64))[rows]
    return out
