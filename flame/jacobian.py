"""The FLAME forward and its Jacobian with respect to every parameter, for Gauss-Newton style fits.

FLAME is linear in the shape and expression coefficients up to the joints (which move with the rest
shape) and the skinning, so their Jacobian is assembled in closed form:

    d v_i / d c = sum_k w_ik [ R_k D_i + (d t_k / d J) (J_reg D) ]

with D the (V, 3, S + E) blend shapes, R_k / t_k the relative joint transforms and J the rest joints
(the second term is how a longer face moves the jaw pivot). Only the 18 pose and translation
pose angles are differenced numerically, in one batched forward. Landmarks are barycentric
combinations of vertices, so their shape/expression Jacobian is the same combination of vertex rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .landmarks import landmark_barycentrics
from .lbs import regress_joints, rigid_transforms
from .model import FLAME
from .rotations import axis_angle_to_matrix


@dataclass(frozen=True)
class FlameJacobian:
    """One posed FLAME and its derivatives, parameter order [shape (S), expression (E), pose (15), translation (3)].

    Args:
        vertices: (V, 3) posed vertices, metres. landmarks: (68, 3) or None without an embedding.
        d_vertices: (V, 3, S + E + 18). d_landmarks: (68, 3, S + E + 18) or None.
    """

    vertices: torch.Tensor
    landmarks: torch.Tensor | None
    d_vertices: torch.Tensor
    d_landmarks: torch.Tensor | None


@dataclass(frozen=True)
class JacobianBasis:
    """What every Jacobian of one FLAME shares (built once per fit: it is the bulk of the memory traffic).

    Args:
        dirs: (V, 3, S + E) shape then expression blend shapes. d_joints: (J, 3, S + E) their effect on
            the rest joints (J_reg @ dirs).
    """

    dirs: torch.Tensor
    d_joints: torch.Tensor


def jacobian_basis(flame: FLAME) -> JacobianBasis:
    """The constant parts of :func:`flame_jacobian` for `flame`."""
    dirs = torch.cat((flame.shapedirs[..., : flame.n_shape], flame.exprdirs[..., : flame.n_expression]), -1)
    return JacobianBasis(dirs=dirs, d_joints=torch.einsum("jv,vck->jck", flame.j_regressor, dirs))


POSE_STEP = 1e-7
"""Finite-difference step (radians) of the pose columns: float64 keeps them accurate to ~1e-7 relative."""


def flame_jacobian(
    flame: FLAME, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor, translation: torch.Tensor,
    basis: JacobianBasis | None = None, rows: torch.Tensor | None = None,
) -> FlameJacobian:
    """FLAME at one parameter set (unbatched: shape (S,), expression (E,), pose (15,) axis-angle,
    translation (3,)) and its Jacobian: exact for shape, expression and translation, forward differences
    in one batched forward for the 15 pose angles (use a float64 FLAME). Costs about one forward pass of
    batch 16, whatever S + E is (forward-mode autodiff through the rotations measured 10x slower).
    basis: :func:`jacobian_basis` of `flame`, to reuse across calls. rows: (R,) int64 vertex indices:
    `d_vertices` is then (R, 3, P) for those vertices only (a fit that only reads its data vertices
    halves the cost); `vertices` stays complete."""
    dtype = flame.v_template.dtype
    shape, expression = shape.to(dtype), expression.to(dtype)
    pose, translation = pose.to(dtype), translation.to(dtype)
    n_pose = pose.shape[0]
    with torch.no_grad():
        poses = pose.expand(n_pose + 1, -1).clone()
        poses[1:] += POSE_STEP * torch.eye(n_pose, dtype=dtype)
        out = flame(shape=shape.expand(n_pose + 1, -1), expression=expression.expand(n_pose + 1, -1), pose=poses,
                    translation=translation.expand(n_pose + 1, -1))
        vertices = out.vertices[0]
        sel = slice(None) if rows is None else rows
        d_vert_pose = ((out.vertices[1:, sel] - vertices[sel]) / POSE_STEP).permute(1, 2, 0)  # (R, 3, 15)
        eye = torch.eye(3, dtype=dtype)
        d_vert_trans = eye.expand(d_vert_pose.shape[0], 3, 3)
        basis = jacobian_basis(flame) if basis is None else basis
        dirs = basis.dirs
        rot_mats = axis_angle_to_matrix(pose.reshape(1, -1, 3))
        template = flame.v_template + torch.einsum("vck,k->vc", dirs, torch.cat((shape, expression)))
        joints_rest = regress_joints(flame.j_regressor, template[None])[0]  # (J, 3)
        d_t, rotations = _joint_translation_map(rot_mats[0], joints_rest, flame._parent_list)
        weights = flame.lbs_weights
        d_t_lin = torch.einsum("kajc,jcn->kan", d_t, basis.d_joints)  # (J, 3, S + E)

        def linear_part(w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
            blended_rot = torch.einsum("vk,kab->vab", w, rotations)  # (R, 3, 3)
            return torch.einsum("vab,vbn->van", blended_rot, d) + torch.einsum("vk,kan->van", w, d_t_lin)

        d_vert_lin = linear_part(weights[sel], dirs[sel])
        d_vertices = torch.cat((d_vert_lin, d_vert_pose, d_vert_trans), -1)
        landmarks = d_landmarks = None
        if flame.has_landmarks and out.landmarks is not None:
            landmarks = out.landmarks[0]
            d_lmk_pose = ((out.landmarks[1:] - landmarks) / POSE_STEP).permute(1, 2, 0)
            face_idx, bary = landmark_barycentrics(rot_mats, flame.lmk_static_faces, flame.lmk_static_bary,
                                                   flame.lmk_dynamic_faces, flame.lmk_dynamic_bary)
            corners = flame.faces[face_idx[0]].reshape(-1)  # (68 * 3,) vertices of the landmark faces
            corner_lin = linear_part(weights[corners], dirs[corners]).reshape(len(landmarks), 3, 3, -1)
            lmk_lin = torch.einsum("lc,lcan->lan", bary[0].to(dtype), corner_lin)
            d_landmarks = torch.cat((lmk_lin, d_lmk_pose, eye.expand(len(landmarks), 3, 3)), -1)
    return FlameJacobian(vertices=vertices, landmarks=landmarks, d_vertices=d_vertices, d_landmarks=d_landmarks)


def _joint_translation_map(
    rot_mats: torch.Tensor, joints_rest: torch.Tensor, parents: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """d t_k / d J_j (J, 3, J, 3) of the relative joint translations, and the world rotations (J, 3, 3).

    For fixed rotations the translations are linear in the rest joints, so posing the rest joints and
    the 3J unit vectors in one batch and differencing gives the map exactly.
    """
    n = joints_rest.numel()
    basis = torch.cat((torch.zeros(1, n, dtype=joints_rest.dtype), torch.eye(n, dtype=joints_rest.dtype)))
    joints = basis.reshape(n + 1, *joints_rest.shape)
    rel = rigid_transforms(rot_mats.expand(n + 1, -1, -1, -1), joints, parents)[1]
    t = rel[:, :, :3, 3]  # (n + 1, J, 3)
    d_t = (t[1:] - t[0]).reshape(*joints_rest.shape, *t.shape[1:]).permute(2, 3, 0, 1)  # (J, 3, J, 3)
    world = rigid_transforms(rot_mats[None], joints_rest[None], parents)[1][0, :, :3, :3]
    return d_t, world
