"""In-memory containers for the official FLAME files, shared by every stage.

The readers and writers in :mod:`p3dmm.flame.files` turn the official on-disk formats into these
plain numpy containers (and back); :class:`p3dmm.flame.model.FLAME` turns them into torch buffers.
Shapes use the project letters: V vertices, F faces, K blend-shape components, J = 5 joints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

JOINT_NAMES = ("global", "neck", "jaw", "left_eye", "right_eye")
"""FLAME's five joints, in pose-vector order; parents are [-1, 0, 1, 1, 1]."""

NUM_SHAPE_OFFICIAL = 300
"""Identity components first in the last axis of `shapedirs`, expression components after them."""

MASK_NAMES = (
    "eye_region", "neck", "left_eyeball", "right_eyeball", "right_ear", "right_eye_region", "forehead",
    "lips", "nose", "scalp", "boundary", "face", "left_ear", "left_eye_region",
)
"""The 14 regions of `FLAME_masks.pkl`, in the file's key order."""


class FlameFileError(ValueError):
    """A FLAME file is missing, unreadable, unsafe or inconsistent. The message starts with the path."""


@dataclass(frozen=True)
class FlameModelData:
    """The arrays of a FLAME model file (`generic_model.pkl`, `flame2023.pkl`, ...), chumpy removed.

    Args:
        v_template: (V, 3) float64, metres, FLAME frame (x to the subject's left, y up, z forward).
        faces: (F, 3) int64 vertex indices, counter-clockwise seen from outside.
        shapedirs: (V, 3, K) float64; components are orthonormal directions times their standard
            deviation, so coefficients are in units of sigma. First `num_shape` are identity, the rest
            expression (official files: 300 + 100).
        posedirs: (V, 3, 36) float64 pose correctives, driven by (R_k - I) of joints 1..4, row-major.
        j_regressor: (5, V) float64 dense; joints = j_regressor @ vertices.
        weights: (V, 5) float64 linear-blend-skinning weights, rows sum to 1.
        parents: (5,) int64 kinematic parents, parents[0] = -1.
        num_shape: number of identity components at the front of `shapedirs`.
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    j_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    num_shape: int = NUM_SHAPE_OFFICIAL

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_expression(self) -> int:
        return int(self.shapedirs.shape[2] - self.num_shape)


@dataclass(frozen=True)
class LandmarkEmbedding:
    """Landmarks as (face index, barycentric coordinates) on the FLAME mesh, as in `landmark_embedding.npy`.

    Args:
        static_faces: (51,) int64, the inner iBUG points 17..67.
        static_bary: (51, 3) float64, barycentric coordinates summing to 1.
        dynamic_faces: (79, 17) int64, jaw-contour points 0..16 for each head yaw row (see
            :func:`p3dmm.flame.landmarks.dynamic_row`).
        dynamic_bary: (79, 17, 3) float32/float64.
        full_faces: (68,) int64, all 68 iBUG points for a frontal face.
        full_bary: (68, 3).
    """

    static_faces: np.ndarray
    static_bary: np.ndarray
    dynamic_faces: np.ndarray
    dynamic_bary: np.ndarray
    full_faces: np.ndarray
    full_bary: np.ndarray


@dataclass(frozen=True)
class UVLayout:
    """FLAME's texture layout, from `head_template.obj`.

    Args:
        vt: (T, 2) float64 texture coordinates in [0, 1], OBJ convention (v up). T >= V: vertices on
            a seam carry several.
        ft: (F, 3) int64 indices into `vt`, one triple per face of the model.
        vertex_uv: (V, 2) float64, one UV per vertex (the first one a face assigns it), as used for
            correspondences. The network's target is (u, 1 - v) of these.
    """

    vt: np.ndarray
    ft: np.ndarray
    vertex_uv: np.ndarray


@dataclass(frozen=True)
class FlameAssets:
    """Everything loaded from a FLAME folder. Optional files are None when absent."""

    model: FlameModelData
    landmarks: LandmarkEmbedding | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    uv: UVLayout | None = None
