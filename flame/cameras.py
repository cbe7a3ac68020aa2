"""The one pinhole-camera convention of the project, with conversions to PyTorch3D.

Every stage (scan rendering, training targets, fitting) uses these formulas; nothing else.

Frames and axes
    World: any right-handed frame, metres (FLAME's head frame for FLAME meshes).
    Camera: OpenCV axes, x right, y down, z forward into the scene; the camera sits at the origin.

Extrinsics (world to camera, column vectors)
    x_cam = R @ x_world + t,   R: (3, 3) rotation, t: (3,) metres.
    The camera centre in world is C = -R^T t; the rows of R are the camera's x, y, z axes in world.

Intrinsics (pixels, no skew)
    K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
    u = fx * x_cam / z_cam + cx    (column, grows to the right)
    v = fy * y_cam / z_cam + cy    (row, grows downwards)
    depth = z_cam (metres, > 0 in front of the camera).

Pixels
    Pixel (row i, col j) has its centre at (u, v) = (j, i); the image of size (H, W) spans
    u in [-0.5, W - 0.5], v in [-0.5, H - 0.5]; its centre is ((W - 1) / 2, (H - 1) / 2).

PyTorch3D differs in three ways, all handled by :func:`to_pytorch3d`: row vectors
(X_view = X_world @ R_p3d + T_p3d), view axes +X left, +Y up, +Z forward (so R_p3d = R^T diag(-1, -1, 1),
T_p3d = diag(-1, -1, 1) t), and screen pixel centres at j + 0.5 (so its principal point is ours + 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

_FLIP_XY = (-1.0, -1.0, 1.0)


@dataclass(frozen=True)
class Cameras:
    """A batch of pinhole cameras in the project convention (see the module docstring).

    Args:
        K: (B, 3, 3) float intrinsics in pixels, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]].
        R: (B, 3, 3) float world-to-camera rotation, x_cam = R x_world + t.
        t: (B, 3) float world-to-camera translation, metres.
        image_size: (H, W) in pixels, shared by the batch.
    """

    K: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        for name in ("K", "R", "t"):
            value = getattr(self, name)
            if not torch.is_tensor(value) or not value.is_floating_point():
                raise ValueError(f"Cameras: {name} must be a float tensor, got {type(value).__name__}")
        if self.K.ndim != 3 or self.K.shape[1:] != (3, 3):
            raise ValueError(f"Cameras: K must be (B, 3, 3), got {tuple(self.K.shape)}")
        batch = self.K.shape[0]
        if self.R.shape != (batch, 3, 3):
            raise ValueError(f"Cameras: R must be ({batch}, 3, 3) like K, got {tuple(self.R.shape)}")
        if self.t.shape != (batch, 3):
            raise ValueError(f"Cameras: t must be ({batch}, 3) like K, got {tuple(self.t.shape)}")
        size = tuple(int(s) for s in self.image_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"Cameras: image_size must be (H, W) with H, W >= 1, got {self.image_size}")
        object.__setattr__(self, "image_size", size)
        structural = torch.stack(
            [self.K[:, 0, 1], self.K[:, 1, 0], self.K[:, 2, 0], self.K[:, 2, 1], self.K[:, 2, 2] - 1], dim=1
        )
        if structural.abs().max() > 1e-6:
            raise ValueError(
                "Cameras: K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew); got a matrix with "
                f"nonzero off-pattern entries {structural.abs().max().item():.3g}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.K.shape[0])

    @property
    def focal(self) -> torch.Tensor:
        """(B, 2) (fx, fy) in pixels."""
        return torch.stack([self.K[:, 0, 0], self.K[:, 1, 1]], dim=-1)

    @property
    def principal_point(self) -> torch.Tensor:
        """(B, 2) (cx, cy) in pixels, project convention (pixel centres at integers)."""
        return self.K[:, :2, 2]

    @property
    def centers(self) -> torch.Tensor:
        """(B, 3) camera centres in world, C = -R^T t."""
        return -(self.R.transpose(1, 2) @ self.t[..., None])[..., 0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cameras:
        """A copy on ``device`` and/or with float ``dtype`` (e.g. float64 for ray casting)."""
        return Cameras(
            K=self.K.to(device=device, dtype=dtype),
            R=self.R.to(device=device, dtype=dtype),
            t=self.t.to(device=device, dtype=dtype),
            image_size=self.image_size,
        )

    def __getitem__(self, index: int | slice) -> Cameras:
        """Cameras ``index`` as a batch (an int gives a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(K=self.K[index], R=self.R[index], t=self.t[index], image_size=self.image_size)


def world_to_camera(points: torch.Tensor, cams: Cameras) -> torch.Tensor:
    """x_cam = R x_world + t for (B, P, 3) world points; returns (B, P, 3) in the OpenCV camera frame."""
    return points @ cams.R.transpose(1, 2) + cams.t[:, None, :]


def project(points: torch.Tensor, cams: Cameras, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points to pixels: u = fx x/z + cx, v = fy y/z + cy with (x, y, z) = R p + t.

    Args:
        points: (B, P, 3) float, metres, world frame. B must equal the camera batch.
        cams: B cameras.
        eps: z is clamped to at least ``eps`` before dividing, so gradients stay finite.

    Returns:
        uv: (B, P, 2) pixels (u = column, v = row; pixel centres at integers). Meaningless where
            depth <= 0 (behind the camera): mask with ``depth > 0``.
        depth: (B, P) z in the camera frame, metres (negative behind the camera).
    """
    if not torch.is_tensor(points) or points.ndim != 3 or points.shape[-1] != 3:
        got = tuple(points.shape) if torch.is_tensor(points) else type(points).__name__
        raise ValueError(f"project: points must be a (B, P, 3) tensor, got {got}")
    if points.shape[0] != cams.batch_size:
        raise ValueError(f"project: points batch {points.shape[0]} != camera batch {cams.batch_size}")
    x_cam = world_to_camera(points, cams)
    depth = x_cam[..., 2]
    xy = x_cam[..., :2] / depth.clamp(min=eps)[..., None]
    uv = xy * cams.focal[:, None, :] + cams.principal_point[:, None, :]
    return uv, depth


def to_pytorch3d(cams: Cameras):
    """The same cameras as a PyTorch3D ``PerspectiveCameras`` in NDC (``in_ndc=True``, image_size set).

    Conversions (see the module docstring): R_p3d = R^T diag(-1, -1, 1) (row vectors, +X left, +Y up),
    T_p3d = diag(-1, -1, 1) t; with s = min(H, W) / 2, focal_ndc = (fx, fy) / s and
    principal_ndc = -((cx, cy) + 0.5 - (W, H) / 2) / s. The + 0.5 is PyTorch3D's pixel-centre
    convention (its screen pixel j spans [j, j + 1]); without it everything rendered shifts by half a
    pixel. This equals ``pytorch3d.utils.cameras_from_opencv_projection`` given K with cx, cy + 0.5.

    Returns:
        pytorch3d.renderer.PerspectiveCameras on the cameras' device, dtype float32.
    """
    from pytorch3d.renderer import PerspectiveCameras

    dtype = torch.float32
    flip = torch.tensor(_FLIP_XY, dtype=dtype, device=cams.K.device)
    height, width = cams.image_size
    scale = min(height, width) / 2.0
    half = torch.tensor([width / 2.0, height / 2.0], dtype=dtype, device=cams.K.device)
    focal = cams.focal.to(dtype) / scale
    principal = -(cams.principal_point.to(dtype) + 0.5 - half) / scale
    return PerspectiveCameras(
        focal_length=focal,
        principal_point=principal,
        R=cams.R.to(dtype).transpose(1, 2) * flip,
        T=cams.t.to(dtype) * flip,
        in_ndc=True,
        image_size=torch.tensor([[height, width]] * cams.batch_size, device=cams.K.device),
        device=cams.K.device,
    )


def look_at(
    eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera (R, t) of cameras at ``eye`` looking at ``target``, ``up`` pointing up in the image.

    Camera axes in world: z = normalise(target - eye); x = normalise(z x up) (image right);
    y = z x x (image down, so ``up`` projects upwards). R has rows x, y, z and t = -R eye.

    Args:
        eye: (B, 3) camera centres, world frame, metres.
        target: (B, 3) points to look at (they land on the principal point).
        up: (B, 3) world direction that appears upwards; must not be parallel to target - eye.

    Returns:
        R: (B, 3, 3), t: (B, 3), in the dtype of ``eye``.
    """
    for name, value in (("eye", eye), ("target", target), ("up", up)):
        if not torch.is_tensor(value) or value.ndim != 2 or value.shape[-1] != 3:
            got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"look_at: {name} must be a (B, 3) tensor, got {got}")
    eye, target, up = torch.broadcast_tensors(eye, target, up)
    forward = target - eye
    dist = forward.norm(dim=-1)
    if (dist <= 1e-12).any():
        raise ValueError("look_at: eye and target coincide for some camera; move the eye away from the target")
    z = forward / dist[..., None]
    right = torch.linalg.cross(z, up, dim=-1)
    rnorm = right.norm(dim=-1)
    if (rnorm <= 1e-6 * up.norm(dim=-1)).any():
        raise ValueError("look_at: up is parallel to (target - eye) for some camera; pick another up vector")
    x = right / rnorm[..., None]
    y = torch.linalg.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=1)
    t = -(R @ eye[..., None])[..., 0]
    return R, t


def intrinsics_from_fov(
    fov_deg: float | torch.Tensor, image_size: tuple[int, int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Intrinsics with square pixels and a centred principal point from a field of view.

    The field of view spans the shorter image side edge to edge (as PyTorch3D's ``FoVPerspectiveCameras``
    does): f = (min(H, W) / 2) / tan(fov / 2), cx = (W - 1) / 2, cy = (H - 1) / 2.

    Args:
        fov_deg: full angle in degrees, in (0, 180): a float, or a (B,) tensor.
        image_size: (H, W) pixels.

    Returns:
        (B, 3, 3) K (B = 1 for a float fov).
    """
    fov = torch.as_tensor(fov_deg, dtype=dtype).reshape(-1)
    if not bool(((fov > 0) & (fov < 180)).all()):
        raise ValueError(f"intrinsics_from_fov: fov_deg must lie in (0, 180) degrees, got {fov.tolist()}")
    height, width = (int(s) for s in image_size)
    f = (min(height, width) / 2.0) / torch.tan(fov * (math.pi / 360.0))
    K = torch.zeros(fov.shape[0], 3, 3, dtype=dtype, device=fov.device)
    K[:, 0, 0] = f
    K[:, 1, 1] = f
    K[:, 0, 2] = (width - 1) / 2.0
    K[:, 1, 2] = (height - 1) / 2.0
    K[:, 2, 2] = 1.0
    return K


def camera_ray_directions(
    cams: Cameras, index: int = 0, window: tuple[int, int, int, int] | None = None, dtype: type = np.float64,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Rays through every pixel centre of camera ``index``, in world frame, for the CPU ray caster.

    Pixel (i, j) -> camera direction ((j - cx) / fx, (i - cy) / fy, 1) -> world R^T d, normalised.
    Computed in numpy float64 (not torch): it feeds embree on CPU workers, is not differentiated, and
    torch's intra-op threads cost ~100x more than the arithmetic for these skinny (H*W, 3) arrays.

    Args:
        window: (row0, row1, col0, col1), half-open: only the rays of that sub-image (H = row1 - row0,
            W = col1 - col0 below); default the whole image.
        dtype: np.float64, or np.float32 for embree (half the memory traffic).
        normalize: False leaves the directions as R^T (x, y, 1), whose camera z is 1: the ray parameter of
            a hit is then its depth.

    Returns:
        origins: (H*W, 3) float64, the camera centre repeated, world frame, metres.
        dirs: (H*W, 3) float64 unit directions, world frame; ray k is pixel (k // W, k % W) (row-major).
            The point at camera depth z on ray k is origins[k] + z / (R[2] . dirs[k]) * dirs[k].
    """
    if not -cams.batch_size <= index < cams.batch_size:
        raise ValueError(f"camera_ray_directions: index {index} outside a batch of {cams.batch_size}")
    height, width = cams.image_size
    K = cams.K[index].detach().cpu().double().numpy()
    R = cams.R[index].detach().cpu().double().numpy()
    t = cams.t[index].detach().cpu().double().numpy()
    centre = -R.T @ t
    R = R.astype(dtype)
    r0, r1, c0, c1 = window if window is not None else (0, height, 0, width)
    x = ((np.arange(c0, c1, dtype=np.float64) - K[0, 2]) / K[0, 0]).astype(dtype)
    y = ((np.arange(r0, r1, dtype=np.float64) - K[1, 2]) / K[1, 1]).astype(dtype)
    # R^T (x, y, 1) = x R[0] + y R[1] + R[2], broadcast over the grid (no BLAS call: its threads
    # dominate the cost of such skinny products on busy CPUs).
    dirs = (x[None, :, None] * R[0] + y[:, None, None] * R[1] + R[2]).reshape(-1, 3)
    if normalize:
        dirs /= np.sqrt(np.einsum("ij,ij->i", dirs, dirs))[:, None]
    origins = np.broadcast_to(centre.astype(dtype), dirs.shape).copy()
    return origins, dirs


def orbit(centre: np.ndarray, yaw: np.ndarray, pitch: np.ndarray, distance_m: float, fov_deg: float,
          image_size: tuple[int, int]) -> Cameras:
    """float64 cameras on a sphere of radius `distance_m` around `centre` (FLAME frame, metres), one per
    (yaw, pitch) in radians (yaw 0, pitch 0: on the +z side, in front of the face), looking at `centre`
    with +y up; `image_size` is (H, W)."""
    offsets = np.stack([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)], axis=1)
    eye = torch.as_tensor(centre[None] + distance_m * offsets)
    target = torch.as_tensor(np.broadcast_to(centre, eye.shape).copy())
    up = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64).expand_as(eye)
    R, t = look_at(eye, target, up)
    K = intrinsics_from_fov(fov_deg, image_size, dtype=torch.float64).expand(len(yaw), 3, 3).clone()
    return Cameras(K=K, R=R, t=t, image_size=image_size)
