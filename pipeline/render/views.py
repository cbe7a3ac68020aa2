"""Random cameras around a head, spread like in-the-wild face photos, seeded and reproducible.

Cameras follow the project convention (:mod:`p3dmm.flame.cameras`: OpenCV axes, world-to-camera,
intrinsics in pixels) with the FLAME frame as world. Angles are relative to the head's own facing
direction (global and neck rotation), so a head turned in its scan still gets frontal-to-profile views
of its face. The focal length follows the distance so the head fills a face crop, as a detector crop
of a real photo would: near cameras get wide lenses (perspective distortion), far ones telephoto.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from p3dmm.flame.cameras import Cameras, look_at


@dataclass(frozen=True)
class ViewConfig:
    """How views are spread. Angles in degrees, distance in metres.

    Args:
        max_yaw: views turn up to this far left/right of frontal (90 = profile).
        frontal_bias: probability that a view's yaw is drawn from N(0, max_yaw / 3) (clipped) rather
            than uniformly: photos are mostly near-frontal, but profiles must be in the data.
        max_pitch: views look from up to this far above/below the face.
        max_roll: in-plane camera roll, uniform in +-max_roll.
        distance: (near, far) camera distance from the head centre, drawn log-uniformly.
        fill: (lo, hi) fraction of the image side the head's extent covers.
        jitter: standard deviation of the aim point's offset from the head centre, as a fraction of the
            head extent (the face is not always dead centre in a crop).
    """

    max_yaw: float = 90.0
    frontal_bias: float = 0.5
    max_pitch: float = 30.0
    max_roll: float = 10.0
    distance: tuple[float, float] = (0.4, 1.5)
    fill: tuple[float, float] = (0.6, 0.85)
    jitter: float = 0.03

    def __post_init__(self) -> None:
        if not (0 <= self.max_yaw <= 180 and 0 <= self.max_pitch < 90 and 0 <= self.max_roll <= 180):
            raise ValueError(f"ViewConfig: angles out of range: {self}")
        if not 0 < self.distance[0] <= self.distance[1] or not 0 < self.fill[0] <= self.fill[1]:
            raise ValueError(f"ViewConfig: distance and fill must be (lo, hi) with 0 < lo <= hi, got {self}")
        if not 0 <= self.frontal_bias <= 1:
            raise ValueError(f"ViewConfig: frontal_bias must lie in [0, 1], got {self.frontal_bias}")


def _rotation_z(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros((len(angle), 3, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1], out[:, 2, 2] = c, -s, s, c, 1.0
    return out


def sample_angles(rng: np.random.Generator, n: int, config: ViewConfig) -> np.ndarray:
    """(n, 3) yaw, pitch, roll in degrees."""
    uniform = rng.uniform(-config.max_yaw, config.max_yaw, n)
    frontal = np.clip(rng.normal(0.0, config.max_yaw / 3.0, n), -config.max_yaw, config.max_yaw)
    yaw = np.where(rng.random(n) < config.frontal_bias, frontal, uniform)
    pitch = rng.uniform(-config.max_pitch, config.max_pitch, n)
    roll = rng.uniform(-config.max_roll, config.max_roll, n)
    return np.stack([yaw, pitch, roll], axis=1)


def sample_views(
    rng: np.random.Generator,
    n: int,
    centre: np.ndarray,
    head_rotation: np.ndarray,
    extent_m: float,
    size: int,
    config: ViewConfig = ViewConfig(),
) -> tuple[Cameras, np.ndarray]:
    """n cameras looking at a head.

    Args:
        rng: the only source of randomness (seed it per scan for reproducible shards).
        centre: (3,) head centre, metres, world (FLAME) frame.
        head_rotation: (3, 3) world rotation of the head (global @ neck); its columns are the head's
            left, up and forward axes.
        extent_m: head size in metres (e.g. the largest side of the face region's bounding box).
        size: square image side in pixels.

    Returns:
        (cameras (batch n, float64), angles (n, 3) yaw/pitch/roll degrees, for the sample metadata).
    """
    angles = sample_angles(rng, n, config)
    yaw, pitch, roll = np.radians(angles).T
    local = np.stack([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)], axis=1)
    direction = local @ np.asarray(head_rotation, np.float64).T
    lo, hi = np.log(config.distance[0]), np.log(config.distance[1])
    distance_m = np.exp(rng.uniform(lo, hi, n))
    target = np.asarray(centre, np.float64)[None] + rng.normal(0.0, config.jitter * extent_m, (n, 3))
    eye = target + distance_m[:, None] * direction
    up = np.broadcast_to(np.asarray(head_rotation, np.float64)[:, 1], (n, 3))
    R, t = look_at(torch.from_numpy(eye), torch.from_numpy(target), torch.from_numpy(up.copy()))
    roll_rotation = torch.from_numpy(_rotation_z(roll))
    R, t = roll_rotation @ R, (roll_rotation @ t[..., None])[..., 0]
    fill = rng.uniform(config.fill[0], config.fill[1], n)
    focal = fill * size * distance_m / extent_m
    K = torch.zeros(n, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = K[:, 1, 1] = torch.from_numpy(focal)
    K[:, 0, 2] = K[:, 1, 2] = (size - 1) / 2.0
    K[:, 2, 2] = 1.0
    return Cameras(K=K, R=R, t=t, image_size=(size, size)), angles
