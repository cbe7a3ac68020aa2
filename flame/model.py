"""The FLAME head model as a torch module: parameters in, posed mesh, joints and landmarks out.

Forward (Li et al. 2017, §3, with the released code's joint convention, docs/flame-files.md §1.3):

    T_S = T + B_S(shape) + B_E(expression)                  vertices_shaped
    J   = J_regressor @ T_S                                 rest joints (shape AND expression)
    T_P = T_S + B_P(pose),  B_P = posedirs . (R_k - I)_{k=1..4}
    v   = sum_k w_k A_k(pose, J) T_P + translation          linear blend skinning, rest pose removed

All positions in metres, FLAME model frame (x to the subject's left, y up, z forward); rotations act on
column vectors. Pose = 5 joints [global, neck, jaw, left eye, right eye], parents [-1, 0, 1, 1, 1].
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .assets import JOINT_NAMES, FlameAssets, FlameModelData, LandmarkEmbedding
from .landmarks import NUM_CONTOUR, NUM_DYNAMIC_ROWS, landmarks_68
from .lbs import blend_shapes, linear_blend_skinning, pose_features, regress_joints, rigid_transforms
from .rotations import axis_angle_to_matrix, rotation_6d_to_matrix

NUM_JOINTS = len(JOINT_NAMES)
_ROTATION_WIDTH = {"axis_angle": 3, "6d": 6}


@dataclass(frozen=True)
class FlameOutput:
    """Result of :meth:`FLAME.forward`. B = batch, V = vertices; float32 (float64 for a float64 model).

    Args:
        vertices: (B, V, 3) posed vertices + translation, metres, FLAME model frame.
        landmarks: (B, 17 + L, 3) landmarks on `vertices` ((B, 68, 3) for the official embedding),
            [dynamic contour, static]; None when the model has no landmark embedding.
        joints: (B, 5, 3) posed joints + translation, metres, [global, neck, jaw, left eye, right eye].
        vertices_shaped: (B, V, 3) template + shape + expression offsets: zero pose, no translation.
            The neutral (identity-only) mesh is this with expression zero.
    """

    vertices: torch.Tensor
    landmarks: torch.Tensor | None
    joints: torch.Tensor
    vertices_shaped: torch.Tensor


def _as_array(x: np.ndarray, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape, strict=True)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"FLAME: {name} has shape {arr.shape}, expected {want}")
    return arr


class FLAME(torch.nn.Module):
    """FLAME built from in-memory assets; every array is a (non-persistent) buffer, so `.to()` moves it.

    Buffers are not saved in `state_dict` (they come from the licensed model file, not from training),
    so a module that owns a FLAME keeps small checkpoints.

    Args:
        assets: a :class:`FlameAssets` (its landmark embedding is used) or a bare :class:`FlameModelData`.
        landmarks: a landmark embedding; overrides the one in `assets` when given.
        n_shape: identity components to keep (the first ones); default all in the file.
        n_expression: expression components to keep (the first ones); default all in the file.
        dtype: float dtype of the buffers, float32 or float64; outputs have this dtype.
    """

    faces: torch.Tensor
    parents: torch.Tensor
    v_template: torch.Tensor
    shapedirs: torch.Tensor
    exprdirs: torch.Tensor
    posedirs: torch.Tensor
    j_regressor: torch.Tensor
    lbs_weights: torch.Tensor

    def __init__(
        self,
        assets: FlameAssets | FlameModelData,
        landmarks: LandmarkEmbedding | None = None,
        *,
        n_shape: int | None = None,
        n_expression: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if isinstance(assets, FlameAssets):
            model, landmarks = assets.model, landmarks if landmarks is not None else assets.landmarks
        elif isinstance(assets, FlameModelData):
            model = assets
        else:
            raise TypeError(f"FLAME: expected FlameAssets or FlameModelData, got {type(assets).__name__}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"FLAME: dtype must be torch.float32 or torch.float64, got {dtype}")

        template = _as_array(model.v_template, "v_template", (None, 3))
        num_verts = template.shape[0]
        dirs = _as_array(model.shapedirs, "shapedirs", (num_verts, 3, None))
        num_shape_file = int(model.num_shape)
        num_expr_file = dirs.shape[2] - num_shape_file
        if not 0 <= num_shape_file <= dirs.shape[2]:
            raise ValueError(f"FLAME: num_shape = {num_shape_file} outside [0, {dirs.shape[2]}] (shapedirs K)")
        self.n_shape = self._count(n_shape, num_shape_file, "n_shape")
        self.n_expression = self._count(n_expression, num_expr_file, "n_expression")
        posedirs = _as_array(model.posedirs, "posedirs", (num_verts, 3, 9 * (NUM_JOINTS - 1)))
        j_regressor = _as_array(model.j_regressor, "j_regressor", (NUM_JOINTS, num_verts))
        weights = _as_array(model.weights, "weights", (num_verts, NUM_JOINTS))
        parents = _as_array(model.parents, "parents", (NUM_JOINTS,)).astype(np.int64)
        faces = _as_array(model.faces, "faces", (None, 3)).astype(np.int64)
        if faces.size and (faces.min() < 0 or faces.max() >= num_verts):
            raise ValueError(f"FLAME: faces index outside [0, {num_verts})")
        self._parent_list = [int(p) for p in parents]
        if self._parent_list[0] != -1 or any(not 0 <= p < k for k, p in enumerate(self._parent_list) if k):
            raise ValueError(f"FLAME: parents must be -1 then earlier joints, got {self._parent_list}")

        def buffer(name: str, value: np.ndarray, as_dtype: torch.dtype = dtype) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(value), dtype=as_dtype), persistent=False)

        buffer("v_template", template)
        buffer("shapedirs", dirs[:, :, : self.n_shape])
        buffer("exprdirs", dirs[:, :, num_shape_file : num_shape_file + self.n_expression])
        buffer("posedirs", posedirs)
        buffer("j_regressor", j_regressor)
        buffer("lbs_weights", weights)
        buffer("faces", faces, torch.int64)
        buffer("parents", parents, torch.int64)

        self.has_landmarks = landmarks is not None
        if landmarks is not None:
            num_faces = faces.shape[0]
            static_faces = _as_array(landmarks.static_faces, "static_faces", (None,)).astype(np.int64)
            static_bary = _as_array(landmarks.static_bary, "static_bary", (static_faces.shape[0], 3))
            dyn_shape = (NUM_DYNAMIC_ROWS, NUM_CONTOUR)
            dynamic_faces = _as_array(landmarks.dynamic_faces, "dynamic_faces", dyn_shape).astype(np.int64)
            dynamic_bary = _as_array(landmarks.dynamic_bary, "dynamic_bary", (*dyn_shape, 3))
            for name, idx in (("static_faces", static_faces), ("dynamic_faces", dynamic_faces)):
                if idx.size and (idx.min() < 0 or idx.max() >= num_faces):
                    raise ValueError(f"FLAME: landmark {name} index outside [0, {num_faces}) (model faces)")
            buffer("lmk_static_faces", static_faces, torch.int64)
            buffer("lmk_static_bary", static_bary)
            buffer("lmk_dynamic_faces", dynamic_faces, torch.int64)
            buffer("lmk_dynamic_bary", dynamic_bary)

    @staticmethod
    def _count(asked: int | None, available: int, name: str) -> int:
        if asked is None:
            return available
        if isinstance(asked, bool) or not isinstance(asked, int | np.integer) or not 0 <= asked <= available:
            raise ValueError(f"FLAME: {name} must be an int in [0, {available}] (the file has {available}), got {asked!r}")
        return int(asked)

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    def extra_repr(self) -> str:
        return (
            f"num_vertices={self.num_vertices}, num_faces={self.faces.shape[0]}, n_shape={self.n_shape}, "
            f"n_expression={self.n_expression}, landmarks={self.has_landmarks}"
        )

    def _check_inputs(self, inputs: dict[str, tuple[torch.Tensor | None, int]]) -> int:
        """Validate ranks, widths, batch sizes, devices; return the common batch size (1 if none)."""
        batch: int | None = None
        first = ""
        device = self.v_template.device
        for name, (value, width) in inputs.items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"FLAME.forward: {name} must be a torch.Tensor, got {type(value).__name__}")
            if value.dim() != 2 or value.shape[1] != width:
                raise ValueError(
                    f"FLAME.forward: {name} expected shape (B, {width}), got {tuple(value.shape)}"
                    + (f" (the model keeps {width} {name} components)" if name in ("shape", "expression") else "")
                )
            if not value.is_floating_point():
                raise ValueError(f"FLAME.forward: {name} must be a floating-point tensor, got {value.dtype}")
            if value.device != device:
                raise ValueError(f"FLAME.forward: {name} is on {value.device}, the model on {device}; move one")
            if batch is None:
                batch, first = value.shape[0], name
            elif value.shape[0] != batch:
                raise ValueError(
                    f"FLAME.forward: batch sizes differ: {first} has B={batch}, {name} has B={value.shape[0]}"
                )
        return 1 if batch is None else batch

    def forward(
        self,
        *,
        shape: torch.Tensor | None = None,
        expression: torch.Tensor | None = None,
        pose: torch.Tensor | None = None,
        translation: torch.Tensor | None = None,
        rotation: Literal["axis_angle", "6d"] = "axis_angle",
    ) -> FlameOutput:
        """Pose the model. Missing inputs are zeros (identity rotations) with the common batch size.

        Computed in float32 (float64 for a float64 model) with autocast off, whatever the input dtype
        (bf16/fp16 inputs are upcast), so mixed-precision callers get full-precision geometry.

        Args:
            shape: (B, n_shape) identity coefficients, sigma units.
            expression: (B, n_expression) expression coefficients, sigma units.
            pose: (B, 15) axis-angle, radians, or (B, 30) 6D (rows convention, see
                :func:`p3dmm.flame.rotations.rotation_6d_to_matrix`), joints [global, neck, jaw, left
                eye, right eye], each local to its parent.
            translation: (B, 3) metres, added to vertices, joints and landmarks.
            rotation: "axis_angle" or "6d", how `pose` is written.

        Returns:
            :class:`FlameOutput`.
        """
        if rotation not in _ROTATION_WIDTH:
            raise ValueError(f"FLAME.forward: rotation must be 'axis_angle' or '6d', got {rotation!r}")
        rot_width = _ROTATION_WIDTH[rotation]
        batch = self._check_inputs(
            {
                "shape": (shape, self.n_shape),
                "expression": (expression, self.n_expression),
                "pose": (pose, NUM_JOINTS * rot_width),
                "translation": (translation, 3),
            }
        )
        device = self.v_template.device
        dtype = torch.float64 if self.v_template.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=device.type, enabled=False):
            return self._forward(batch, dtype, shape, expression, pose, translation, rotation)

    def _buffer(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        return getattr(self, name).to(dtype)  # no-op unless the module was cast to half precision

    def _forward(
        self,
        batch: int,
        dtype: torch.dtype,
        shape: torch.Tensor | None,
        expression: torch.Tensor | None,
        pose: torch.Tensor | None,
        translation: torch.Tensor | None,
        rotation: str,
    ) -> FlameOutput:
        device = self.v_template.device
        template = self._buffer("v_template", dtype)
        v_shaped = template.expand(batch, -1, -1)
        if shape is not None and self.n_shape:
            v_shaped = v_shaped + blend_shapes(shape.to(dtype), self._buffer("shapedirs", dtype))
        if expression is not None and self.n_expression:
            v_shaped = v_shaped + blend_shapes(expression.to(dtype), self._buffer("exprdirs", dtype))
        joints_rest = regress_joints(self._buffer("j_regressor", dtype), v_shaped)

        if pose is None:
            rot_mats = torch.eye(3, dtype=dtype, device=device).expand(batch, NUM_JOINTS, 3, 3)
        elif rotation == "6d":
            rot_mats = rotation_6d_to_matrix(pose.to(dtype).reshape(batch, NUM_JOINTS, 6))
        else:
            rot_mats = axis_angle_to_matrix(pose.to(dtype).reshape(batch, NUM_JOINTS, 3))
        v_posed = v_shaped + blend_shapes(pose_features(rot_mats), self._buffer("posedirs", dtype))
        joints, relative = rigid_transforms(rot_mats, joints_rest, self._parent_list)
        vertices = linear_blend_skinning(v_posed, self._buffer("lbs_weights", dtype), relative)
        if translation is not None:
            offset = translation.to(dtype)[:, None]
            vertices, joints = vertices + offset, joints + offset

        landmarks = None
        if self.has_landmarks:
            landmarks = landmarks_68(
                vertices,
                self.faces,
                rot_mats,
                self.lmk_static_faces,
                self._buffer("lmk_static_bary", dtype),
                self.lmk_dynamic_faces,
                self._buffer("lmk_dynamic_bary", dtype),
            )
        if v_shaped.stride(0) == 0:  # still the expanded template (no shape, no expression given)
            v_shaped = v_shaped.contiguous()
        return FlameOutput(vertices=vertices, landmarks=landmarks, joints=joints, vertices_shaped=v_shaped)


def load_flame(
    path: str | os.PathLike,
    *,
    n_shape: int | None = None,
    n_expression: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> FLAME:
    """Read a FLAME folder or model `.pkl` with :func:`p3dmm.flame.files.load_assets` and build :class:`FLAME`.

    Args:
        path: folder with the model (and optionally the landmark embedding), or a model `.pkl`.
        n_shape, n_expression, dtype: as in :class:`FLAME`.
        device: where to put the buffers; default CPU.
    """
    from .files import load_assets  # lazy: the file readers are a separate, heavier module

    model = FLAME(load_assets(path), n_shape=n_shape, n_expression=n_expression, dtype=dtype)
    return model if device is None else model.to(device)
