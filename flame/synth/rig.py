"""The synthetic head's skeleton: skinning weights and a joint regressor consistent with FLAME's joints.

Joints (FLAME order): 0 global at the base of the neck, 1 neck at the skull base, 2 jaw at the
temporomandibular hinge, 3 left eye and 4 right eye at the eyeball centres. Each joint is regressed
as the mean of a vertex set that surrounds it (a neck ring, the two hinge regions, an eyeball), so
the joints follow any identity shape the way FLAME's regressor does.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from p3dmm.flame.synth.head import HeadMesh

PARENTS = np.array([-1, 0, 1, 1, 1], dtype=np.int64)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def jaw_weight(head: HeadMesh) -> np.ndarray:
    """How much each skin vertex follows the jaw: below the lips and the jaw line, above the neck."""
    v, a = head.verts, head.anatomy
    theta = np.abs(np.arctan2(v[:, 0], v[:, 2]))
    corner = np.arctan2(a.mouth_half_width, 0.085)
    hinge_theta = np.arctan2(a.jaw_hinge[0], a.jaw_hinge[2])
    # the jaw line: the mouth line between the corners, rising to the hinge beyond them
    t = np.clip((theta - corner) / (hinge_theta - corner), 0.0, 1.0)
    line_y = a.mouth_y + t * (a.jaw_hinge[1] - a.mouth_y)
    w = smoothstep((line_y - v[:, 1]) / 0.012 + 0.5 * (theta > corner))
    w[(head.lip_side == -1) | (v[:, 1] < a.mouth_y) & (theta < corner)] = 1.0  # the lower lip is the jaw's
    w[(head.lip_side == 1) | (v[:, 1] > a.mouth_y + 0.004) & (theta < corner)] = 0.0
    w *= 1.0 - smoothstep((theta - hinge_theta) / 0.35)  # nothing behind the hinge
    w *= 1.0 - smoothstep((-v[:, 1] - 0.105) / 0.03)  # the neck stays with the neck
    w *= v[:, 2] > -0.02
    return w


def skinning_weights(head: HeadMesh) -> np.ndarray:
    """(V, 5) weights, rows summing to 1."""
    v = head.verts
    w = np.zeros((len(v), 5))
    skin = head.eyeball == 0
    w_global = smoothstep((-0.075 - v[:, 1]) / 0.07)  # lower neck follows the body
    w_jaw = jaw_weight(head) * (1.0 - w_global)
    w[:, 0] = w_global
    w[:, 2] = w_jaw
    w[:, 1] = 1.0 - w_global - w_jaw
    w[~skin] = 0.0
    w[head.eyeball == 1, 3] = 1.0
    w[head.eyeball == 2, 4] = 1.0
    return w


def joint_regressor(head: HeadMesh) -> scipy.sparse.csc_matrix:
    """(5, V) sparse non-negative rows summing to 1."""
    v, a = head.verts, head.anatomy
    skin = head.eyeball == 0
    rows = []
    for y0 in (-0.135, -0.07):  # global: ring low on the neck; neck: ring at the skull base
        ring = skin & (np.abs(v[:, 1] - y0) < 0.006) & (v[:, 2] < 0.045)
        rows.append(ring)
    hinge = np.zeros(len(v), dtype=bool)
    for sign in (1.0, -1.0):
        target = np.array(a.jaw_hinge) * np.array([sign, 1.0, 1.0])
        d = np.linalg.norm(v - target, axis=1)
        d[~skin] = np.inf
        hinge[np.argsort(d)[:6]] = True
    rows += [hinge, head.eyeball == 1, head.eyeball == 2]
    dense = np.stack([r / r.sum() for r in (r.astype(np.float64) for r in rows)])
    return scipy.sparse.csc_matrix(dense)
