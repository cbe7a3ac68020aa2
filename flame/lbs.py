"""Batched building blocks of FLAME's forward pass (Li et al. 2017, §3): blend shapes, joints, LBS.

Every function is pure and batched (leading B always). Units: metres for positions, FLAME model frame
(x to the subject's left, y up, z forward). Rotations act on column vectors, `x' = R x + t`; a 4x4
transform is `[[R, t], [0, 0, 0, 1]]`. J is the number of joints (5 for FLAME), parents[0] = -1 and
parents[k] < k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def blend_shapes(coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Linear blend shape offsets `sum_k coeffs[b, k] * dirs[:, :, k]`.

    Args:
        coeffs: (B, K) coefficients (sigma units for shape/expression; pose features for posedirs).
        dirs: (V, 3, K) directions, metres per unit coefficient.

    Returns:
        (B, V, 3) vertex offsets, metres.
    """
    return torch.einsum("bk,vck->bvc", coeffs, dirs)


def pose_features(rot_mats: torch.Tensor) -> torch.Tensor:
    """Pose-corrective features: (R_k - I) of joints 1..J-1 (root excluded), flattened row-major.

    Feature index 9 (k - 1) + 3 a + b holds (R_k - I)[a, b], the layout of FLAME's `posedirs`.

    Args:
        rot_mats: (B, J, 3, 3) local joint rotations.

    Returns:
        (B, 9 (J - 1)) features; (B, 36) for FLAME. Zero at zero pose.
    """
    eye = torch.eye(3, dtype=rot_mats.dtype, device=rot_mats.device)
    return (rot_mats[:, 1:] - eye).reshape(rot_mats.shape[0], -1)


def regress_joints(j_regressor: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Joint locations as fixed linear combinations of vertices: `joints[b] = j_regressor @ vertices[b]`.

    Args:
        j_regressor: (J, V) weights.
        vertices: (B, V, 3) metres.

    Returns:
        (B, J, 3) metres.
    """
    return torch.einsum("jv,bvc->bjc", j_regressor, vertices)


def _parent_list(parents: Sequence[int] | torch.Tensor, num_joints: int) -> list[int]:
    parent_list = [int(p) for p in (parents.tolist() if isinstance(parents, torch.Tensor) else parents)]
    if len(parent_list) != num_joints:
        raise ValueError(f"parents: expected {num_joints} entries (one per joint), got {len(parent_list)}")
    if parent_list[0] != -1 or any(not 0 <= p < k for k, p in enumerate(parent_list) if k > 0):
        raise ValueError(f"parents: expected parents[0] = -1 and 0 <= parents[k] < k, got {parent_list}")
    return parent_list


def rigid_transforms(
    rot_mats: torch.Tensor, joints: torch.Tensor, parents: Sequence[int] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics: world transforms along the chain, and the same with the rest pose removed.

    G_0 = [R_0 | J_0], G_k = G_parent(k) [R_k | J_k - J_parent(k)]; the relative transform
    A_k = G_k [I | -J_k] = [G_k[:3, :3] | G_k[:3, 3] - G_k[:3, :3] J_k] maps a rest-pose point to its
    posed place, so A_k = I at zero pose.

    Args:
        rot_mats: (B, J, 3, 3) local joint rotations.
        joints: (B, J, 3) rest-pose joint locations, metres.
        parents: (J,) ints, parents[0] = -1, parents[k] < k. A list avoids a device sync.

    Returns:
        posed_joints: (B, J, 3) joint locations after posing, metres (G_k[:3, 3]).
        relative: (B, J, 4, 4) relative transforms A_k.
    """
    parent_list = _parent_list(parents, joints.shape[1])
    offsets = torch.stack(
        [joints[:, k] if p < 0 else joints[:, k] - joints[:, p] for k, p in enumerate(parent_list)], 1
    )
    bottom = torch.zeros(*rot_mats.shape[:2], 1, 4, dtype=rot_mats.dtype, device=rot_mats.device)
    bottom[..., 0, 3] = 1.0
    local = torch.cat((torch.cat((rot_mats, offsets[..., None]), -1), bottom), -2)
    world: list[torch.Tensor] = []
    for k, p in enumerate(parent_list):
        world.append(local[:, k] if p < 0 else world[p] @ local[:, k])
    world_t = torch.stack(world, 1)
    rotation, posed_joints = world_t[..., :3, :3], world_t[..., :3, 3]
    translation = posed_joints - (rotation @ joints[..., None])[..., 0]
    relative = torch.cat((torch.cat((rotation, translation[..., None]), -1), bottom), -2)
    return posed_joints, relative


def linear_blend_skinning(
    vertices: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor
) -> torch.Tensor:
    """Linear blend skinning: each vertex moved by the weight-blended transform `sum_k w[v, k] A_k`.

    Evaluated as `sum_k w[v, k] (A_k v)` (the same by linearity): one (3J x 3) @ (3 x V) product per
    item instead of V small blended matrices, which is several times faster forward and backward.

    Args:
        vertices: (B, V, 3) rest-pose vertices (with pose correctives), metres.
        weights: (V, J) skinning weights, rows summing to 1.
        transforms: (B, J, 4, 4) relative joint transforms A_k (:func:`rigid_transforms`).

    Returns:
        (B, V, 3) posed vertices, metres.
    """
    batch, num_joints = transforms.shape[:2]
    rotation = transforms[..., :3, :3].reshape(batch, 3 * num_joints, 3)
    per_joint = (rotation @ vertices.transpose(1, 2)).view(batch, num_joints, 3, -1)
    per_joint = per_joint + transforms[..., :3, 3, None]  # (B, J, 3, V): A_k v for every joint
    return (per_joint * weights.t()[:, None, :]).sum(1).transpose(1, 2)
