"""Batched rotation conversions: axis-angle, 6D (Zhou et al. 2019) and 3x3 matrices.

Conventions (all functions): rotation matrices act on column vectors, `x' = R @ x`; an axis-angle
vector `aa` is `angle * unit_axis` with the angle in radians, right-handed. Leading dimensions `...`
are any batch shape (kept as is). Dtype and device follow the input.
"""

from __future__ import annotations

import torch

# Below this squared angle (rad^2) the Taylor series is used: its first dropped term (theta^6 / 5040)
# is below 1e-22 there, and the closed form would divide by ~0 (NaN gradient at exactly zero).
_SMALL_ANGLE_SQ = 1e-6


def _check_last_dims(x: torch.Tensor, dims: tuple[int, ...], name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < len(dims) or tuple(x.shape[x.dim() - len(dims):]) != dims:
        want = "(..., " + ", ".join(str(d) for d in dims) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix: `skew(v) @ x == cross(v, x)`.

    Args:
        v: (..., 3).

    Returns:
        (..., 3, 3).
    """
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    rows = (
        torch.stack((zero, -z, y), -1),
        torch.stack((z, zero, -x), -1),
        torch.stack((-y, x, zero), -1),
    )
    return torch.stack(rows, -2)


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula `R = I + A(theta) K + B(theta) K^2`, with K = skew(aa), theta = |aa|.

    A = sin(theta) / theta and B = (1 - cos(theta)) / theta^2 are evaluated in closed form (B as
    2 sin^2(theta/2) / theta^2, free of cancellation) and by their Taylor series near zero, so the
    result is exact and its gradient finite everywhere, including at aa = 0 (where dR/daa = skew).

    Args:
        aa: (..., 3) axis-angle vectors, radians.

    Returns:
        (..., 3, 3) rotation matrices, same dtype and device.
    """
    _check_last_dims(aa, (3,), "aa")
    theta_sq = (aa * aa).sum(-1)
    small = theta_sq < _SMALL_ANGLE_SQ
    safe_sq = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    theta = safe_sq.sqrt()
    a_closed = torch.sin(theta) / theta
    b_closed = 2.0 * torch.sin(0.5 * theta) ** 2 / safe_sq
    a_taylor = 1.0 - theta_sq / 6.0 + theta_sq * theta_sq / 120.0
    b_taylor = 0.5 - theta_sq / 24.0 + theta_sq * theta_sq / 720.0
    a = torch.where(small, a_taylor, a_closed)[..., None, None]
    b = torch.where(small, b_taylor, b_closed)[..., None, None]
    k = skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    return eye + a * k + b * (k @ k)


def head_rotation(pose: torch.Tensor) -> torch.Tensor:
    """The head's world rotation R_global @ R_neck from FLAME axis-angle poses (..., 15) -> (..., 3, 3).

    Head-frame normals (the priors' targets) are n_head = R^T n_world with this R.
    """
    _check_last_dims(pose, (15,), "pose")
    return axis_angle_to_matrix(pose[..., 0:3]) @ axis_angle_to_matrix(pose[..., 3:6])


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Unit quaternion (w, x, y, z) with w >= 0, by Shepperd's method (stable for every rotation).

    Of the four algebraically equal formulas, each row uses the one whose divisor (4w, 4x, 4y or 4z)
    is largest, so nothing is divided by a small number, also near 180 degrees.

    Args:
        matrix: (..., 3, 3) rotation matrices.

    Returns:
        (..., 4) quaternions, scalar first.
    """
    _check_last_dims(matrix, (3, 3), "matrix")
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 q_i^2 for i = w, x, y, z; they sum to 4 so the largest is >= 1.
    four_sq = torch.stack((1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1)
    # Rows of candidate quaternions scaled by 4 q_i: row i holds 4 q_i * (w, x, y, z).
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s10, s02, s21 = m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2]
    scaled = torch.stack(
        (
            torch.stack((four_sq[..., 0], d21, d02, d10), -1),
            torch.stack((d21, four_sq[..., 1], s10, s02), -1),
            torch.stack((d02, s10, four_sq[..., 2], s21), -1),
            torch.stack((d10, s02, s21, four_sq[..., 3]), -1),
        ),
        -2,
    )
    # Divisor 4 q_i = 2 sqrt(4 q_i^2); clamped so the rows not chosen stay finite (and their gradient).
    candidates = scaled / (2.0 * four_sq.clamp_min(0.1).sqrt())[..., None]
    best = four_sq.argmax(-1)
    index = best[..., None, None].expand(*best.shape, 1, 4)
    quat = candidates.gather(-2, index)[..., 0, :]
    return torch.where(quat[..., :1] < 0, -quat, quat)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Axis-angle vector of each rotation, angle in [0, pi], robust near 0 and near pi.

    Goes through :func:`matrix_to_quaternion`; angle = 2 atan2(|v|, w) for q = (w, v). At exactly pi
    the axis sign is arbitrary (both are the same rotation).

    Args:
        matrix: (..., 3, 3) rotation matrices.

    Returns:
        (..., 3) axis-angle vectors, radians.
    """
    quat = matrix_to_quaternion(matrix)
    w, v = quat[..., 0], quat[..., 1:]
    n_sq = (v * v).sum(-1)
    small = n_sq < _SMALL_ANGLE_SQ
    n = torch.where(small, torch.ones_like(n_sq), n_sq).sqrt()
    # angle / |v|; near zero 2 atan(n / w) / n = 2 / w - 2 n^2 / (3 w^3) + O(n^4), and w ~ 1 there.
    w_safe = torch.where(small, w, torch.ones_like(w))
    factor_taylor = 2.0 / w_safe - 2.0 * n_sq / (3.0 * w_safe**3)
    factor = torch.where(small, factor_taylor, 2.0 * torch.atan2(n, w) / n)
    return v * factor[..., None]


def rotation_6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """Continuous 6D representation (Zhou et al. 2019) to a rotation matrix, by Gram-Schmidt.

    Rows convention (as PyTorch3D): `x = (a1, a2)` with a1 = x[..., :3], a2 = x[..., 3:];
    b1 = a1 / |a1|, b2 = normalise(a2 - (b1 . a2) b1), b3 = b1 x b2, and R has ROWS (b1, b2, b3).
    So :func:`matrix_to_rotation_6d` returns the first two rows, and the identity is
    (1, 0, 0, 0, 1, 0). (The paper stacks columns; the two conventions are transposes.)

    Args:
        x: (..., 6), unnormalised; a1 and a2 must not be (near) parallel or zero.

    Returns:
        (..., 3, 3) rotation matrices.
    """
    _check_last_dims(x, (6,), "x")
    eps = torch.finfo(x.dtype).eps
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(eps)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = b2 / b2.norm(dim=-1, keepdim=True).clamp_min(eps)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), -2)


def matrix_to_rotation_6d(matrix: torch.Tensor) -> torch.Tensor:
    """First two rows of each rotation matrix, flattened: the inverse of :func:`rotation_6d_to_matrix`.

    Args:
        matrix: (..., 3, 3).

    Returns:
        (..., 6) = (R[0, :], R[1, :]).
    """
    _check_last_dims(matrix, (3, 3), "matrix")
    return matrix[..., :2, :].reshape(*matrix.shape[:-2], 6)
