"""Where the parts of the synthetic head are: one small dataclass, jittered per seed.

Metres, FLAME frame: x to the subject's left, y up, z forward (out of the face). The numbers are
adult-head proportions (head width about 15 cm, chin to crown about 23 cm), not any real scan.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from p3dmm.flame.synth.sdf import Blob


@dataclass(frozen=True)
class Anatomy:
    eye_centre: tuple[float, float, float] = (0.032, 0.022, 0.058)  # left eye; right is mirrored
    eye_radius: float = 0.0125
    eye_opening: tuple[float, float] = (0.0118, 0.0056)  # almond half-width, half-height
    mouth_y: float = -0.050
    mouth_half_width: float = 0.025
    nose_tip: tuple[float, float, float] = (0.0, -0.016, 0.110)
    chin: tuple[float, float, float] = (0.0, -0.098, 0.064)
    ear_centre: tuple[float, float, float] = (0.079, 0.004, -0.014)
    jaw_hinge: tuple[float, float, float] = (0.066, -0.012, 0.004)
    neck_radius: float = 0.052
    neck_bottom_y: float = -0.165
    crown_y: float = 0.123

    def jittered(self, rng: np.random.Generator, amount: float = 0.03) -> Anatomy:
        """The same head with every length scaled by about 1 +- amount (seeded, symmetric)."""

        def s(value):
            if isinstance(value, tuple):
                return tuple(float(v) * (1.0 + amount * rng.uniform(-1, 1)) for v in value)
            return float(value) * (1.0 + amount * rng.uniform(-1, 1))

        return replace(self, **{name: s(getattr(self, name)) for name in self.__dataclass_fields__})


def mirrored(p: tuple[float, float, float]) -> np.ndarray:
    return np.array([-p[0], p[1], p[2]])


def head_blobs(a: Anatomy) -> list[Blob]:
    """The head as a smooth CSG of simple shapes: skull, face, jaw, neck, features, ears, eyes."""
    e = np.array(a.eye_centre)
    blobs = [
        Blob("ellipsoid", (np.array([0.0, 0.034, -0.012]), np.array([0.074, a.crown_y - 0.034, 0.098]))),
        Blob("ellipsoid", (np.array([0.0, -0.034, 0.024]), np.array([0.060, 0.074, 0.068])), k=0.03),
        Blob("capsule", (np.array([0, a.neck_bottom_y - 0.06, -0.022]), np.array([0, -0.03, -0.022]),
                         a.neck_radius, a.neck_radius), k=0.03),
        Blob("ellipsoid", (np.array(a.chin), np.array([0.022, 0.016, 0.016])), k=0.016),
    ]
    for sign in (1.0, -1.0):
        flip = np.array([sign, 1.0, 1.0])
        blobs += [
            Blob("ellipsoid", (np.array([0.050, -0.066, 0.006]) * flip, np.array([0.010, 0.018, 0.028])), k=0.02),
            Blob("ellipsoid", (np.array([0.047, 0.002, 0.056]) * flip, np.array([0.019, 0.012, 0.020])), k=0.016),
            Blob("ellipsoid", (np.array([0.030, e[1] + 0.019, 0.071]) * flip, np.array([0.020, 0.0055, 0.010])),
                 k=0.012),
        ]
    ears = []
    for sign in (1.0, -1.0):
        flip = np.array([sign, 1.0, 1.0])
        c = np.array(a.ear_centre) * flip
        ears += [
            Blob("ellipsoid", (c, np.array([0.011, 0.030, 0.017])), k=0.007),
            Blob("ellipsoid", (c + np.array([0.009 * sign, 0.004, 0.003]), np.array([0.006, 0.012, 0.008])),
                 op="subtract", k=0.004),
        ]
    tip = np.array(a.nose_tip)
    nose = [
        Blob("capsule", (np.array([0.0, e[1] + 0.013, 0.083]), tip + np.array([0, 0.006, -0.004]), 0.0065, 0.0085),
             k=0.010),
        Blob("ellipsoid", (tip, np.array([0.011, 0.010, 0.010])), k=0.006),
        Blob("ellipsoid", (np.array([0.0135, tip[1] - 0.007, tip[2] - 0.016]), np.array([0.0085, 0.007, 0.008])),
             k=0.005),
        Blob("ellipsoid", (np.array([-0.0135, tip[1] - 0.007, tip[2] - 0.016]), np.array([0.0085, 0.007, 0.008])),
             k=0.005),
    ]
    m = a.mouth_y
    w = a.mouth_half_width
    mouth = [
        Blob("ellipsoid", (np.array([0.0, m + 0.0055, 0.086]), np.array([w * 0.98, 0.0068, 0.012])), k=0.004),
        Blob("ellipsoid", (np.array([0.0, m - 0.0075, 0.084]), np.array([w * 0.86, 0.0078, 0.012])), k=0.004),
        Blob("ellipsoid", (np.array([0.0, m, 0.100]), np.array([w * 1.05, 0.0012, 0.014])), op="subtract", k=0.002),
    ]
    sockets = []
    for c in (e, mirrored(a.eye_centre)):
        sockets += [
            Blob("ellipsoid", (c + np.array([0.0, 0.0, 0.025]), np.array([0.021, 0.013, 0.016])), op="subtract",
                 k=0.007),
            Blob("ellipsoid", (c, np.full(3, a.eye_radius)), k=0.002),
        ]
    return blobs + ears + nose + mouth + sockets
