"""Initial similarity between FLAME (metres) and a scan (any frame): from landmarks, or by a search.

The similarity and its convention (y = s * x @ R.T + t, FLAME frame -> scan frame) are
:class:`p3dmm.flame.similarity.Similarity`.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.spatial import cKDTree

from p3dmm.flame.similarity import Similarity, umeyama

from .config import RegistrationConfig


def align_landmarks(model_landmarks: np.ndarray, scan_landmarks: np.ndarray, with_scale: bool) -> Similarity:
    """Similarity from FLAME landmarks (68, 3) metres to scan landmarks (68, 3) (NaN rows skipped)."""
    ok = np.isfinite(scan_landmarks).all(axis=1) & np.isfinite(model_landmarks).all(axis=1)
    return umeyama(model_landmarks[ok], scan_landmarks[ok], with_scale=with_scale)


def _axis_rotations() -> list[np.ndarray]:
    """The 24 proper rotations that permute and flip coordinate axes."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[np.arange(3), perm] = signs
            if np.linalg.det(m) > 0:
                out.append(m)
    return out


def _pca(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centroid (3,), principal axes as columns (3, 3) with det +1, RMS radius."""
    c = points.mean(axis=0)
    x = points - c
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt.T
    if np.linalg.det(axes) < 0:
        axes[:, 2] *= -1
    return c, axes, float(np.sqrt((x**2).sum(axis=1).mean()))


def trimmed_icp(
    model: np.ndarray, scan: np.ndarray, scan_tree: cKDTree, init: Similarity, iterations: int,
    keep: float = 0.8, with_scale: bool = True,
) -> tuple[Similarity, float]:
    """Similarity ICP of model points (M, 3) FLAME metres onto scan points (P, 3), both directions trimmed.

    Model->scan pairs keep the `keep` closest fraction (holes); scan->model pairs keep scan points
    within 2.5x the median model->scan distance (clutter such as hair and torso is farther). Using both
    directions stops the scale from collapsing (model->scan alone is minimised by a tiny model).
    Returns the similarity and its score: trimmed RMS model->scan distance in model units (lower = better).
    with_scale False keeps the scale of `init` (a metric scan).
    """
    sim = init
    score = np.inf
    for _ in range(iterations):
        y = sim.apply(model)
        d_ms, j_ms = scan_tree.query(y)
        cut = np.quantile(d_ms, keep)
        sel = d_ms <= cut
        score = float(np.sqrt(np.mean(d_ms[sel] ** 2)) / sim.scale)
        d_sm, j_sm = cKDTree(y).query(scan, distance_upper_bound=2.5 * float(np.median(d_ms)) + 1e-12)
        ok = np.isfinite(d_sm)
        src = np.concatenate([model[sel], model[j_sm[ok]]])
        dst = np.concatenate([scan[j_ms[sel]], scan[ok]])
        if len(src) < 10:
            break
        sim = umeyama(src, dst) if with_scale else _with_scale(umeyama(src, dst / sim.scale, with_scale=False), sim.scale)
    return sim, score


def _with_scale(rigid: Similarity, scale: float) -> Similarity:
    """`rigid` fits model points onto scan points / scale; the same map as a similarity of that scale."""
    return Similarity(scale, rigid.rotation, rigid.translation * scale)


def align_search(
    model: np.ndarray, scan: np.ndarray, config: RegistrationConfig, rng: np.random.Generator,
) -> tuple[Similarity, float]:
    """Robust similarity without landmarks, from any orientation, unknown scale and some clutter.

    model: (M, 3) FLAME skin points (template, metres); scan: (P, 3) in its own frame.
    Candidates: the model's PCA frame mapped onto the scan's through each of the 24 axis rotations, times
    3 scales (the RMS-radius ratio and smaller ones: clutter such as a torso inflates the scan's radius)
    times 3 centres (the centroid and +-0.5 RMS radius along the scan's main axis, where a head sits
    above a torso). Each gets a few trimmed-ICP steps; the best `keep` get more; the winner is refined
    on denser points. Returns (similarity FLAME -> scan, score: trimmed RMS in model metres).
    """
    m = model[rng.choice(len(model), min(len(model), config.align_points), replace=False)]
    m_small = m[: max(len(m) // 2, 50)]
    s = scan[rng.choice(len(scan), min(len(scan), 4 * config.align_points), replace=False)]
    tree = cKDTree(s)
    cm, am, rm = _pca(m)
    cs, as_, rs = _pca(s)
    cands: list[tuple[float, Similarity]] = []
    for q in _axis_rotations()[: config.align_candidates]:
        rot = as_ @ q @ am.T
        for fs in (1.0, 0.75, 0.55):
            scale = fs * rs / rm
            for shift in (0.0, 0.5, -0.5):
                centre = cs + shift * rs * as_[:, 0]
                init = Similarity(scale, rot, centre - scale * cm @ rot.T)
                sim, score = trimmed_icp(m_small, s, tree, init, 4)
                cands.append((score, sim))
    cands.sort(key=lambda c: c[0])
    best: tuple[Similarity, float] | None = None
    for _, init in cands[:8]:
        sim, score = trimmed_icp(m, s, tree, init, config.align_iterations)
        if best is None or score < best[1]:
            best = (sim, score)
    dense = scan[rng.choice(len(scan), min(len(scan), 8 * config.align_points), replace=False)]
    return trimmed_icp(model, dense, cKDTree(dense), best[0], 2 * config.align_iterations)  # type: ignore[index]
