"""Evaluation metrics: zero for identical surfaces, the offset for a shifted one, alignment undoes motion;
closest points on triangles; the NoW scan-to-mesh alignment."""

from __future__ import annotations

import numpy as np
import trimesh

from p3dmm.fitting.metrics import (
    align_face,
    align_to_scan,
    closest_on_triangles,
    compare_surfaces,
    evaluate_face,
    now_face_crop,
)
from p3dmm.flame.similarity import umeyama


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
    sim = umeyama(src, dst, with_scale=True)  # the registration's Umeyama, which the metrics align with
    np.testing.assert_allclose([sim.scale], [1.3], atol=1e-9)
    np.testing.assert_allclose(sim.rotation, rot, atol=1e-9)
    np.testing.assert_allclose(sim.translation, [0.1, -0.2, 0.3], atol=1e-9)


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


def test_align_face_exposes_the_alignment_the_metrics_use():
    v, f = _sphere()
    region = v[f].mean(1)[:, 2] > 0
    rot = _rotation(np.random.default_rng(2))
    moved = v @ rot.T + np.array([0.05, 0.02, -0.1])
    lmk = np.arange(0, len(v), 50)
    aligned = align_face(moved, v, f, region, moved[lmk], v[lmk], samples=5000)
    assert np.abs(aligned.pred_vertices - v).max() < 1e-3  # the motion undone, for every vertex (a sphere slides)
    assert compare_surfaces(*aligned.meshes(), 5000) == evaluate_face(moved, v, f, region, moved[lmk], v[lmk],
                                                                        samples=5000)


def test_closest_on_triangles_matches_trimesh():
    rng = np.random.default_rng(3)
    tri = rng.normal(size=(3000, 3, 3))
    tri[:10, 2] = tri[:10, 1]  # degenerate (zero-area) triangles too
    points = rng.normal(size=(3000, 3)) * 2
    ours = closest_on_triangles(points, tri[:, 0], tri[:, 1], tri[:, 2])
    np.testing.assert_allclose(ours, trimesh.triangles.closest_point(tri, points), atol=1e-9)


def test_align_to_scan_now_protocol():
    """A sphere 'scan' (another tessellation, moved): the same sphere measures 0, one 2 mm larger measures
    2 mm from every scan point (no rigid motion brings a whole sphere closer)."""
    scan = trimesh.creation.icosphere(subdivisions=3, radius=0.09)
    rot = _rotation(np.random.default_rng(4))
    scan_v = np.asarray(scan.vertices) @ rot.T + np.array([0.3, -0.2, 0.1])
    v, f = _sphere()  # subdivision 4: every scan vertex is one of its vertices
    lmk = np.arange(0, len(scan.vertices), 90)[:7]
    same = align_to_scan(v, f, v[lmk], scan_v, scan_v[lmk]).metrics()
    assert same.median_mm < 1e-3 and same.mean_mm < 1e-3
    big = v * (0.092 / 0.09)
    m = align_to_scan(big, f, big[lmk], scan_v, scan_v[lmk]).metrics()
    assert 1.9 < m.median_mm < 2.05 and m.std_mm < 0.2  # the faceted sphere: within a tenth of a mm


def test_now_face_crop_is_a_ball_from_the_landmarks():
    """Centre 30% up from the nose bottom towards the inner eye corners' midpoint; radius 1.4 x the mean of
    the outer-eye distance (90 mm) and that nose length (sqrt(50^2 + 20^2) mm): 100.7 mm."""
    lmk = np.array([[-0.045, 0.03, 0], [-0.015, 0.03, 0], [0.015, 0.03, 0], [0.045, 0.03, 0], [0, -0.02, 0.02],
                    [-0.025, -0.05, 0.01], [0.025, -0.05, 0.01]])
    centre = np.array([0.0, -0.005, 0.014])
    points = centre + np.array([[0, 0, 0], [0.1, 0, 0], [0, -0.1, 0], [0.102, 0, 0], [0, 0, -0.102]])
    np.testing.assert_array_equal(now_face_crop(points, lmk), [True, True, True, False, False])
