"""Signed distance primitives for the synthetic head: ellipsoids, capsules and smooth blends.

All functions take points (P, 3) float64 in metres and return (P,) signed distances (negative
inside). Ellipsoid distances are the usual first-order approximation, exact enough for a surface
that is only ever found by root finding along rays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def ellipsoid(points: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    q = (points - centre) / radii
    k0 = np.linalg.norm(q, axis=-1)
    k1 = np.linalg.norm(q / radii, axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def capsule(points: np.ndarray, a: np.ndarray, b: np.ndarray, radius_a: float, radius_b: float) -> np.ndarray:
    """Tapered capsule from `a` (radius_a) to `b` (radius_b); approximate for unequal radii."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0.0, 1.0)
    closest = a + t[:, None] * ab
    return np.linalg.norm(points - closest, axis=-1) - (radius_a + (radius_b - radius_a) * t)


def smooth_union(d1: np.ndarray, d2: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: blends two surfaces with a fillet of size about k."""
    h = np.clip(0.5 + 0.5 * (d2 - d1) / k, 0.0, 1.0)
    return d2 + (d1 - d2) * h - k * h * (1.0 - h)


def smooth_subtract(d: np.ndarray, cut: np.ndarray, k: float) -> np.ndarray:
    """Carve `cut` out of `d` with a fillet of size about k."""
    return -smooth_union(-d, cut, k)


@dataclass(frozen=True)
class Blob:
    """One primitive of the head and how it combines: op 'union' or 'subtract', fillet size k."""

    kind: str  # "ellipsoid" | "capsule"
    params: tuple
    op: str = "union"
    k: float = 0.01

    def distance(self, points: np.ndarray) -> np.ndarray:
        if self.kind == "ellipsoid":
            return ellipsoid(points, *self.params)
        return capsule(points, *self.params)


def evaluate(blobs: list[Blob], points: np.ndarray) -> np.ndarray:
    """Fold the blobs in order: the first is the base, each next one is unioned or carved."""
    d = blobs[0].distance(points)
    for blob in blobs[1:]:
        other = blob.distance(points)
        d = smooth_union(d, other, blob.k) if blob.op == "union" else smooth_subtract(d, other, blob.k)
    return d
