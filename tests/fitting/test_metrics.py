"""Evaluation metrics: zero for identical surfaces, the offset for a shifted one, alignment undoes motion."""

from __future__ import annotations

import numpy as np
import trimesh

from p3dmm.fitting.metrics import evaluate_face, umeyama


def _sphere():
    m = trimesh.creation.icosphere(subdivisions=4, radius=0.09)
    return np.asarray(m.vertices), np.asarray(m.faces)


def _rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(30, 3))
    rot = _rotation(rng)
    dst = 1.3 * src @ rot.T + np.array([0.1, -0.2, 0.3])
    s, r, t = umeyama(src, dst, scale=True)
    np.testing.assert_allclose([s], [1.3], atol=1e-9)
    np.testing.assert_allclose(r, rot, atol=1e-9)
    np.testing.assert_allclose(t, [0.1, -0.2, 0.3], atol=1e-9)


def test_metrics_after_alignment():
    v, f = _sphere()
    region = v[f].mean(1)[:, 2] > 0  # the front half
    rng = np.random.default_rng(1)
    rot = _rotation(rng)
    moved = v @ rot.T + np.array([0.05, 0.02, -0.1])
    lmk = np.arange(0, len(v), 50)
    same = evaluate_face(moved, v, f, region, moved[lmk], v[lmk])
    assert same.chamfer_l1_mm < 0.3 and same.fscore_1mm > 0.95 and same.normal_consistency > 0.99
    # a sphere 2 mm larger: rigid ICP slides the front half inwards but cannot remove the size difference
    bigger = v * (0.092 / 0.09)
    m = evaluate_face(bigger @ rot.T, v, f, region, (bigger @ rot.T)[lmk], v[lmk])
    assert 0.5 < m.chamfer_l1_mm < 2.0 and m.fscore_1mm < 0.8 and m.fscore_5mm > 0.95
    # ... and the similarity option can
    ms = evaluate_face(bigger @ rot.T, v, f, region, (bigger @ rot.T)[lmk], v[lmk], similarity=True)
    assert ms.chamfer_l1_mm < 0.4
