"""The QA page's numbers: scan points are scored by their distance to the registered face, clutter is not."""

import numpy as np

from p3dmm.pipeline.report.registration import heat_colors, scan_errors_mm


def _grid(n: int = 21, size: float = 0.1):
    xs = np.linspace(-size / 2, size / 2, n)
    xx, yy = np.meshgrid(xs, xs)
    verts = np.stack([xx.ravel(), yy.ravel(), np.zeros(n * n)], axis=1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    return verts, faces


def test_scan_errors_score_face_points_and_skip_clutter():
    verts, faces = _grid()
    region = np.ones(len(faces), bool)
    points = np.array([[0.0, 0.0, 0.001],   # 1 mm above the surface
                       [0.01, -0.02, -0.0025],  # 2.5 mm below
                       [0.0, 0.0, 0.2]])    # 20 cm away: clutter, not scored
    errors = scan_errors_mm(points, verts, faces, region, mm_per_unit=1000.0)
    np.testing.assert_allclose(errors[:2], [1.0, 2.5], atol=1e-6)
    assert np.isnan(errors[2])


def test_heat_colors_run_blue_to_red_and_grey_for_unscored():
    colors = heat_colors(np.array([0.0, 3.0, 10.0, np.nan]))
    assert colors[0, 2] > colors[0, 0]  # 0 mm is blue
    assert colors[1, 0] > colors[1, 2] and np.allclose(colors[1], colors[2])  # >= 3 mm saturates red
    assert np.allclose(colors[3], colors[3, 0])  # grey
