"""Similarity transforms between the FLAME frame and a scan's (or another mesh's) frame.

Convention (row vectors, as PyTorch3D's points_alignment): a FLAME-frame point x maps into the other
frame as  y = s * x @ R.T + t.  `Similarity.apply` does that, `Similarity.invert_points` the inverse;
`umeyama` finds the least-squares one between corresponding points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Similarity:
    """y = scale * x @ rotation.T + translation (FLAME metres -> scan frame).

    Args:
        scale: scan units per FLAME metre (1000 for a scan in mm).
        rotation: (3, 3) float64, proper rotation.
        translation: (3,) float64, scan units.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        """x: (..., 3) FLAME metres -> (..., 3) scan frame."""
        return self.scale * x @ self.rotation.T + self.translation

    def invert_points(self, y: np.ndarray) -> np.ndarray:
        """y: (..., 3) scan frame -> (..., 3) FLAME metres."""
        return (y - self.translation) @ self.rotation / self.scale

    def camera_in_source(self, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A camera of the target frame (x_cam = R y + t) as a rigid camera of the source frame.

        x_cam = R (s R_sim x + t_sim) + t; dividing the camera frame by s leaves every projection as it
        was, so the camera of x is (R R_sim, (R t_sim + t) / s). Used for calibrated photos of a scan seen
        from the FLAME frame, and by the synthetic multi-view data the other way round.
        """
        R = np.asarray(R, np.float64)
        return R @ self.rotation, (R @ self.translation + np.asarray(t, np.float64)) / self.scale

    def compose(self, inner: Similarity) -> Similarity:
        """self after inner: x -> self.apply(inner.apply(x))."""
        return Similarity(
            self.scale * inner.scale,
            self.rotation @ inner.rotation,
            self.scale * inner.translation @ self.rotation.T + self.translation,
        )


def identity() -> Similarity:
    return Similarity(1.0, np.eye(3), np.zeros(3))


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, with_scale: bool = True) -> Similarity:
    """Least-squares similarity with dst ~ s * src @ R.T + t (Umeyama 1991), optionally weighted.

    src, dst: (N, 3) float64, N >= 3 non-collinear; weights: (N,) >= 0 or None.
    """
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = (u * d) @ vt
    var_s = float(w @ (xs**2).sum(axis=1))
    scale = float((sig * d).sum() / var_s) if with_scale and var_s > 0 else 1.0
    return Similarity(scale, rot, mu_d - scale * mu_s @ rot.T)
