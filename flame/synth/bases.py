"""Identity, expression and pose-corrective blend shapes of the synthetic head.

Each basis starts as named, anatomically meaningful displacement fields (head width, nose length,
smile, blink, ...) followed by random smooth fields, is orthonormalised in that order (QR, so the
early, large components keep their meaning), and is scaled by a decreasing standard deviation, the
way FLAME stores components (orthonormal direction times sigma). Eyeballs move rigidly with the
identity (translation of the eye centre) and are untouched by expressions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from p3dmm.flame.synth.head import HeadMesh
from p3dmm.flame.synth.rig import jaw_weight, smoothstep

Field = Callable[[np.ndarray], np.ndarray]


def gauss(p: np.ndarray, centre, sigma) -> np.ndarray:
    return np.exp(-0.5 * np.sum(((p - np.asarray(centre)) / np.asarray(sigma)) ** 2, axis=-1))


def sym(centre) -> list:
    """The centre and its mirror image across x = 0."""
    c = np.asarray(centre, dtype=np.float64)
    return [c, c * np.array([-1.0, 1.0, 1.0])]


def gauss2(p, centre, sigma) -> np.ndarray:
    return sum(gauss(p, c, sigma) for c in sym(centre))


def lip_sign(head: HeadMesh) -> np.ndarray:
    """+1 on and above the upper lip, -1 on and below the lower lip, smooth beyond the seam."""
    smooth = np.tanh((head.verts[:, 1] - head.anatomy.mouth_y) / 0.004)
    return np.where(head.lip_side != 0, head.lip_side, smooth)


def identity_fields(head: HeadMesh) -> list[np.ndarray]:
    """Named identity fields (V, 3), then nothing random (added by `random_fields`)."""
    p, a = head.verts, head.anatomy
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    sx = np.tanh(x / 0.01)  # smooth sign: midline vertices do not tear apart
    face = smoothstep((z - 0.0) / 0.06)
    jaw = jaw_weight(head)
    e = np.array(a.eye_centre)
    f = [
        p.copy(),  # overall size
        np.stack([x, 0 * y, 0 * z], -1),  # width
        np.stack([0 * x, y, 0 * z], -1),  # height
        np.stack([0 * x, np.minimum(y, 0.0) * face, 0 * z], -1),  # face length
        np.stack([x * jaw, 0 * y, 0 * z], -1),  # jaw width
        gauss(p, a.chin, (0.025, 0.02, 0.02))[:, None] * np.array([0, -0.3, 1.0]),  # chin
        gauss(p, a.nose_tip, (0.012, 0.02, 0.02))[:, None] * np.array([0, -1.0, 0.3]),  # nose length
        gauss(p, a.nose_tip, (0.014, 0.018, 0.02))[:, None] * np.array([0, 0, 1.0]),  # nose protrusion
        np.stack([x * gauss(p, (0, a.nose_tip[1] - 0.006, 0.095), (0.02, 0.012, 0.02)), 0 * y, 0 * z], -1),
        gauss2(p, (0.03, e[1] + 0.02, 0.075), (0.02, 0.008, 0.015))[:, None] * np.array([0, 0, 1.0]),  # brows
        (gauss2(p, (0.047, 0.0, 0.056), (0.015, 0.012, 0.015))[:, None] * np.stack([sx, 0 * x, 1 + 0 * x], -1)),
        np.stack([sx * gauss2(p, e, (0.022, 0.018, 0.03)), 0 * y, 0 * z], -1),  # eye spacing
        gauss2(p, e, (0.022, 0.016, 0.03))[:, None] * np.array([0, 1.0, 0]),  # eye height
        (gauss(p, (0, a.mouth_y, 0.085), (0.025, 0.01, 0.02)) * lip_sign(head))[:, None]
        * np.array([0, 1.0, 0.6]),  # lip fullness
        np.stack([x * gauss(p, (0, a.mouth_y, 0.085), (0.03, 0.012, 0.02)), 0 * y, 0 * z], -1),  # mouth width
        (smoothstep((y - 0.04) / 0.05) * face)[:, None] * np.array([0, 0, -1.0]) * (y - 0.04)[:, None] * 8,
        (gauss2(p, a.ear_centre, (0.012, 0.03, 0.02))[:, None] * (p - np.array(a.ear_centre) * np.stack(
            [sx, 1 + 0 * x, 1 + 0 * x], -1))),  # ear size
        np.stack([sx * gauss2(p, a.ear_centre, (0.012, 0.03, 0.02)), 0 * y, 0 * z], -1),  # ear protrusion
        (smoothstep((-y - 0.09) / 0.04))[:, None] * np.stack([x, 0 * y, z + 0.022], -1),  # neck thickness
        (smoothstep(-z / 0.08))[:, None] * np.array([0, 0, -1.0]) * smoothstep((y + 0.04) / 0.06)[:, None],
        gauss2(p, (0.045, -0.035, 0.05), (0.018, 0.018, 0.02))[:, None] * np.stack([sx, 0 * x, 0.5 + 0 * x], -1),
    ]
    return f


def large_identity_fields(head: HeadMesh) -> list[np.ndarray]:
    """Head-scale identity fields (V, 3) for the "flame" setting, largest variation first.

    Real FLAME's first components are global: overall size, head length, width and height, how far
    the face stands out of the skull and sits on it, face length, jaw width, cranium height and the
    back of the skull, tapers (a face narrower or wider than the cranium). These are those, as smooth
    fields, so that a spread at real FLAME's scale comes from whole-head proportions, not from bumps;
    two of them slide the face and the crown along the surface, as real FLAME's components do.
    """
    p = head.verts
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    zero = 0 * x
    face = smoothstep((z - 0.0) / 0.06)
    jaw = smoothstep((-y - 0.02) / 0.07) * smoothstep((z + 0.02) / 0.08)  # broad: no crease on the jaw line
    cranium = smoothstep((y - 0.02) / 0.08)
    back = smoothstep(-z / 0.08) * smoothstep((y + 0.04) / 0.06)
    lower = smoothstep((-y - 0.0) / 0.08)
    return [
        p.copy(),  # overall size
        np.stack([zero, zero, z], -1),  # head length (front to back)
        np.stack([x, zero, zero], -1),  # width
        np.stack([zero, y, zero], -1),  # height
        face[:, None] * np.array([0, 0, 1.0]) * smoothstep((y + 0.12) / 0.04)[:, None],  # face protrusion
        (face * smoothstep((y + 0.11) / 0.04))[:, None] * np.array([0, 1.0, 0]),  # face higher or lower
        cranium[:, None] * np.array([0, 0, 1.0]),  # crown forward or back
        np.stack([zero, np.minimum(y, 0.0) * face, zero], -1),  # face length
        np.stack([x * jaw, zero, zero], -1),  # jaw width
        np.stack([zero, cranium * (y - 0.02), zero], -1),  # cranium height
        np.stack([zero, zero, back * z], -1),  # back of the skull
        np.stack([x * y / 0.1, zero, zero], -1),  # taper: wider at the top or at the bottom
        np.stack([x * z / 0.1, zero, zero], -1),  # taper: wider at the face or at the back
        np.stack([x * lower * face, zero, zero], -1),  # lower face width (cheeks and jaw)
        np.stack([zero, zero, y * face], -1),  # face slope: forehead forward, chin back or the reverse
        (lower * face)[:, None] * np.array([0, 0, 1.0]),  # lower face (mouth and chin) forward
    ]


def expression_fields(head: HeadMesh) -> list[tuple[str, np.ndarray, float]]:
    """Named, localised expression fields (V, 3) with their peak displacement at +1 sigma (metres)."""
    p, a = head.verts, head.anatomy
    x, y = p[:, 0], p[:, 1]
    sx = np.tanh(x / 0.01)
    m = a.mouth_y
    lower = (y < m - 1e-4) | (head.lip_side == -1)
    upper = ~lower
    e = np.array(a.eye_centre)
    corners = gauss2(p, (a.mouth_half_width, m, 0.08), (0.012, 0.012, 0.02))
    lips = gauss(p, (0, m, 0.085), (0.028, 0.014, 0.02))
    jaw = jaw_weight(head)
    cheeks = gauss2(p, (0.045, -0.02, 0.05), (0.016, 0.016, 0.02))
    out = []

    def add(name, field, peak):
        out.append((name, field, peak))

    add("jaw_drop", jaw[:, None] * np.array([0, -1.0, -0.25]), 0.006)
    add("smile", corners[:, None] * np.stack([0.6 * sx, 1 + 0 * x, -0.5 + 0 * x], -1), 0.006)
    add("mouth_stretch", corners[:, None] * np.stack([sx, 0 * x, -0.3 + 0 * x], -1), 0.005)
    add("pucker", lips[:, None] * np.stack([-x / 0.025, 0 * x, 1 + 0 * x], -1), 0.006)
    for side, label in ((1.0, "left"), (-1.0, "right")):
        c = e * np.array([side, 1.0, 1.0])
        lid = gauss(p, c + np.array([0, a.eye_opening[1], 0.012]), (0.014, 0.004, 0.01))
        add(f"blink_{label}", (lid * (y > c[1]))[:, None] * np.array([0, -1.0, 0.15]), 0.009)
    brows = gauss2(p, (0.03, e[1] + 0.022, 0.072), (0.02, 0.012, 0.02))
    add("brow_raise", brows[:, None] * np.array([0, 1.0, 0.2]), 0.006)
    add("frown", brows[:, None] * np.stack([-0.6 * sx, -1 + 0 * x, 0.3 + 0 * x], -1), 0.005)
    add("cheek_puff", cheeks[:, None] * np.stack([sx, 0 * x, 0.4 + 0 * x], -1), 0.006)
    add("lip_corner_down", corners[:, None] * np.array([0, -1.0, 0]), 0.005)
    add("upper_lip_raise", (lips * upper)[:, None] * np.array([0, 1.0, 0.3]), 0.004)
    add("lower_lip_depress", (lips * lower)[:, None] * np.array([0, -1.0, 0.2]), 0.004)
    add("lip_press", lips[:, None] * np.stack([0 * x, -lip_sign(head), -0.5 + 0 * x], -1),
        0.003)
    add("nose_wrinkle", gauss(p, (0, a.nose_tip[1] + 0.03, 0.1), (0.012, 0.01, 0.02))[:, None]
        * np.array([0, 1.0, 0.3]), 0.003)
    add("jaw_forward", jaw[:, None] * np.array([0, 0, 1.0]), 0.004)
    add("jaw_sideways", jaw[:, None] * np.array([1.0, 0, 0]), 0.004)
    add("mouth_left", lips[:, None] * np.array([1.0, 0, 0]), 0.004)
    add("squint", gauss2(p, e + np.array([0, -a.eye_opening[1] - 0.002, 0.012]), (0.014, 0.004, 0.01))[:, None]
        * np.array([0, 1.0, 0]), 0.003)
    add("cheek_raise", cheeks[:, None] * np.array([0, 1.0, 0.3]), 0.004)
    add("nostril_flare", gauss2(p, (0.014, a.nose_tip[1] - 0.007, a.nose_tip[2] - 0.016), (0.008, 0.008, 0.01)
                                )[:, None] * np.stack([sx, 0 * x, 0 * x], -1), 0.002)
    add("dimple", gauss2(p, (a.mouth_half_width + 0.01, m, 0.07), (0.006, 0.008, 0.01))[:, None]
        * np.stack([-0.3 * sx, 0 * x, -1 + 0 * x], -1), 0.002)
    add("brow_raise_left", (brows * (x > 0))[:, None] * np.array([0, 1.0, 0.2]), 0.004)
    add("smile_left", (corners * (x > 0))[:, None] * np.array([0.6, 1.0, -0.5]), 0.004)
    return out


def random_fields(head: HeadMesh, rng: np.random.Generator, n: int, region: np.ndarray | None,
                  scale=(0.02, 0.06), symmetric: bool = True) -> list[np.ndarray]:
    """n smooth random fields: sums of three Gaussian bumps with random vector amplitudes."""
    p = head.verts
    anchors = p if region is None else p[region]
    fields = []
    for _ in range(n):
        f = np.zeros_like(p)
        for _ in range(3):
            c = anchors[rng.integers(len(anchors))]
            s = rng.uniform(*scale)
            amp = rng.normal(size=3)
            f += gauss(p, c, s)[:, None] * amp
            if symmetric:
                f += gauss(p, c * np.array([-1, 1, 1]), s)[:, None] * amp * np.array([-1, 1, 1])
        fields.append(f)
    return fields


def rigid_eyeballs(head: HeadMesh, field: np.ndarray) -> np.ndarray:
    """Eyeballs translate with the field's value at their centre instead of deforming."""
    out = field.copy()
    for label in (1, 2):
        sel = head.eyeball == label
        centre = head.verts[sel].mean(axis=0)
        nearest = np.argmin(np.where(head.eyeball == 0, np.linalg.norm(head.verts - centre, axis=1), np.inf))
        out[sel] = field[nearest]
    return out


def orthonormal(fields: list[np.ndarray], n: int) -> np.ndarray:
    """QR in order: (V, 3, n) orthonormal over the flattened 3V vector, signs kept from the fields.

    A field that is (nearly) a combination of earlier ones would leave only amplified round-off,
    so fields whose residual is under 0.1% of their norm are skipped; the first n others are kept.
    """
    a = np.stack([f.reshape(-1) for f in fields], axis=1)
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))[None]
    healthy = np.abs(np.diag(r)) > 1e-3 * np.linalg.norm(a, axis=0)
    keep = np.flatnonzero(healthy)
    if len(keep) < n:
        raise RuntimeError(f"only {len(keep)} independent fields for {n} components")
    # re-orthonormalise the kept fields alone, so skipped ones leave no trace
    q, r = np.linalg.qr(a[:, keep[:n]])
    q *= np.sign(np.diag(r))[None]
    return q.reshape(fields[0].shape[0], 3, n)


IDENTITY_PROFILES = {"easy": (0.003, 1.0, 0.7), "flame": (0.0072, 15.0, 2.5)}
"""Sigma profile per identity setting: (rms_1, knee, decay), the RMS displacement of component k being
rms_1 · (1 + (k - 1) / knee)^-decay metres ("easy": 3 mm · k^-0.7; "flame": flat over the first
~15 head-scale components, then falling fast so the small random fields stay sub-millimetre)."""


def shape_basis(head: HeadMesh, rng: np.random.Generator, n: int = 300, identity: str = "easy") -> np.ndarray:
    """(V, 3, n): orthonormal identity directions times sigma, sigma decreasing.

    identity "easy" (the default): RMS 3 mm · k^-0.7, a narrow spread (median 3.7 mm from the template
    with N(0, 1) on 100 components). "flame": head-scale fields first and a profile at real FLAME's
    spread (median about 12 mm, p95 about 23 mm); see docs/flame.md.
    """
    if identity not in IDENTITY_PROFILES:
        raise ValueError(f"identity: expected one of {sorted(IDENTITY_PROFILES)}, got {identity!r}")
    named = identity_fields(head)
    n_extra = n - len(named) + 20  # spares, in case some are dependent
    skin = head.eyeball == 0
    extra = random_fields(head, rng, n_extra // 2, skin) + random_fields(
        head, rng, n_extra - n_extra // 2, skin, symmetric=False
    )
    if identity == "flame":
        named = large_identity_fields(head) + named[5:]  # the easy list's first five are in the large ones
    fields = [rigid_eyeballs(head, f) for f in named + extra]
    basis = orthonormal(fields, n)
    k = np.arange(1, n + 1)
    rms_1, knee, decay = IDENTITY_PROFILES[identity]
    rms = rms_1 * k ** -decay if knee == 1.0 else rms_1 * (1 + (k - 1) / knee) ** -decay
    return basis * (rms * np.sqrt(head.verts.shape[0]))[None, None]


def expression_basis(head: HeadMesh, rng: np.random.Generator, n: int = 100) -> tuple[np.ndarray, list[str]]:
    """(V, 3, n): named localised expressions first, then small random localised ones; and their names."""
    named = expression_fields(head)
    skin = head.eyeball == 0
    face = skin & (head.verts[:, 2] > 0.03) & (head.verts[:, 1] < 0.07)
    extra = random_fields(head, rng, n - len(named) + 20, face, scale=(0.008, 0.02), symmetric=False)
    fields = [f * skin[:, None] for f in [f for _, f, _ in named] + extra]
    basis = orthonormal(fields, n)
    peaks = np.array([pk for _, _, pk in named] + list(0.002 * np.arange(1, n - len(named) + 1) ** -0.5))
    scale = peaks / np.linalg.norm(basis, axis=1).max(axis=0)
    return basis * scale[None, None], [name for name, _, _ in named]


def pose_correctives(head: HeadMesh, rng: np.random.Generator) -> np.ndarray:
    """(V, 3, 36): small smooth correctives near the neck and the jaw; the eyes have none."""
    v = head.verts
    out = np.zeros((len(v), 3, 36))
    neck = smoothstep((-v[:, 1] - 0.06) / 0.05) * (head.eyeball == 0)
    jaw = jaw_weight(head)
    for joint, region in ((0, neck), (1, jaw)):  # joints 1 (neck) and 2 (jaw) -> feature blocks 0, 1
        for e in range(9):
            f = random_fields(head, rng, 1, region > 0.5 if region.any() else None, scale=(0.02, 0.04))[0]
            f = f / np.abs(f).max() * 0.004 * region[:, None]
            out[:, :, 9 * joint + e] = f
    return out
