"""Register one scan to FLAME topology: align, fit FLAME, refine offsets, measure, accept or reject.

`register_scan` is a pure function (no files, no Ray); a driver decides what to do with a rejection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.stats import chi2

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.landmarks import five_point_landmarks, is_five_point
from p3dmm.flame.mesh import vertex_normals_np
from p3dmm.flame.model import FLAME
from p3dmm.flame.scan import ScanGeometry
from p3dmm.flame.similarity import Similarity, identity, umeyama

from .align import align_landmarks, align_search, trimmed_icp
from .config import RegistrationConfig
from .fit import FitData, FitResult, fit_flame, fit_to_vertices
from .geometry import boundary_vertices
from .metrics import coverage, scan_to_surface, summary_mm
from .nicp import nicp_offsets, skin_support

FIT_REGION_MASKS = ("face", "forehead", "nose", "lips", "eye_region")
METRIC_REGION_MASKS = ("face",)
HAIRLINE_MASKS = ("forehead",)
"""Left out of the FLAME fit's wide stages: hair often covers them (see `fit_flame`'s `core`)."""
EYEBALL_MASKS = ("left_eyeball", "right_eyeball")
MIN_LANDMARKS = 5
"""Fewer finite landmark rows than this are ignored (5: the eye centres, nose tip and mouth corners a
face detector gives fix a similarity)."""


@dataclass(frozen=True)
class Registration:
    """One registered scan.

    Args:
        vertices: (V, 3) float64, FLAME topology in the scan's frame and units.
        params: "shape" (n_shape,), "expression" (n_expression,), "pose" (15,) axis-angle,
            "translation" (3,) FLAME metres; "offsets" (V, 3) FLAME metres added after the FLAME forward;
            "scale" float, "rotation" (3, 3), "similarity_translation" (3,) with
            vertices = scale * (FLAME(...).vertices + offsets) @ rotation.T + similarity_translation.
        metrics: distances in FLAME mm ("median_mm", "p95_mm", "mean_mm", "n_points", "fit_median_mm",
            "fit_p95_mm", "offset_p95_mm"), "coverage" in [0, 1], "align_score_mm", timings "t_*_s".
        accepted: all acceptance rules of the config hold. reason: the first failed rule, else None.
        converged: the FLAME fit's loss settled.
    """

    vertices: np.ndarray
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    accepted: bool = False
    reason: str | None = None
    converged: bool = False


def _mask(assets: FlameAssets, names: tuple[str, ...], num_v: int) -> np.ndarray:
    out = np.zeros(num_v, dtype=bool)
    for name in names:
        if name in assets.masks:
            out[np.asarray(assets.masks[name], dtype=np.int64)] = True
    return out


def _check_input(scan: ScanGeometry) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    v = np.asarray(scan.vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) < 100:
        raise ValueError(f"register_scan: vertices must be (P >= 100, 3), got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("register_scan: vertices contain NaN or infinity; clean the scan first")
    f = None
    if scan.faces is not None:
        f = np.asarray(scan.faces, dtype=np.int64)
        if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0 or f.min() < 0 or f.max() >= len(v):
            raise ValueError(f"register_scan: faces must be (F, 3) indices into {len(v)} vertices, got {f.shape}")
    lm = None
    if scan.landmarks is not None:
        lm = np.asarray(scan.landmarks, dtype=np.float64)
        if lm.shape != (68, 3):
            raise ValueError(f"register_scan: landmarks must be (68, 3), got {lm.shape}")
        if np.isfinite(lm).all(axis=1).sum() < MIN_LANDMARKS:
            lm = None
    return v, f, lm


@dataclass(frozen=True)
class _Model:
    """FLAME and the vertex sets every step reads, built once per scan.

    Args:
        flame: FLAME with the fitted component counts. faces: (F, 3) int64.
        eyes, fit_region, metric_region: (V,) bool; eyeballs are never fitted, moved or scored.
        fit_core: (V,) bool, `fit_region` without the hairline masks (the wide stages' data).
        skin: (M,) int64 vertices that are not eyeballs. template: (V, 3) float64 zero-parameter mesh.
        landmarks: (68, 3) float64 landmarks of the template, or None when the model has none.
    """

    flame: FLAME
    faces: np.ndarray
    eyes: np.ndarray
    fit_region: np.ndarray
    fit_core: np.ndarray
    metric_region: np.ndarray
    skin: np.ndarray
    template: np.ndarray
    landmarks: np.ndarray | None


@dataclass(frozen=True)
class _AlignedScan:
    """The scan in the aligned frame (FLAME metres up to the scale the fit still finds).

    Args:
        points: (P, 3) float64. normals: (P, 3) unit normals, or None for a point cloud.
        tree: cKDTree over `points`, shared by NICP and the metrics.
    """

    points: np.ndarray
    normals: np.ndarray | None
    tree: cKDTree


@contextmanager
def _timed(times: dict[str, float], key: str) -> Iterator[None]:
    """Record the wall time of the enclosed step as times[key]: the t_*_s metrics show where a slow scan spends it."""
    start = time.perf_counter()
    yield
    times[key] = time.perf_counter() - start


def _metric_frame(scan: ScanGeometry) -> bool:
    """The scan is in FLAME's frame and in true metres: then neither alignment nor the fit may rescale it."""
    return bool(scan.frame_known and scan.metric)


def _model_setup(assets: FlameAssets, config: RegistrationConfig) -> _Model:
    """FLAME at the configured component counts, capped by what the model has, and its regions.

    Masks the model lacks are skipped, so small FLAME-format models (the synthetic one) work too.
    """
    model = assets.model
    num_v = model.v_template.shape[0]
    n_shape = min(config.n_shape, int(model.num_shape))
    n_expr = min(config.n_expression, model.shapedirs.shape[2] - int(model.num_shape))
    flame = FLAME(assets, n_shape=n_shape, n_expression=n_expr, dtype=torch.float64)
    eyes = _mask(assets, EYEBALL_MASKS, num_v)
    with torch.no_grad():
        zero = flame()
    return _Model(
        flame=flame, faces=np.asarray(model.faces, dtype=np.int64), eyes=eyes,
        fit_region=_mask(assets, FIT_REGION_MASKS, num_v) & ~eyes,
        fit_core=_mask(assets, FIT_REGION_MASKS, num_v) & ~eyes & ~_mask(assets, HAIRLINE_MASKS, num_v),
        metric_region=_mask(assets, METRIC_REGION_MASKS, num_v) & ~eyes,
        skin=np.nonzero(~eyes)[0], template=zero.vertices[0].double().numpy(),
        landmarks=None if zero.landmarks is None else zero.landmarks[0].double().numpy(),
    )


def _initial_similarity(
    scan: ScanGeometry, points: np.ndarray, landmarks: np.ndarray | None, init: np.ndarray | None,
    model: _Model, config: RegistrationConfig, rng: np.random.Generator,
) -> tuple[Similarity, float]:
    """Similarity FLAME metres -> scan frame, and the search score in metres (NaN when nothing was searched).

    In order: the dataset's own FLAME fit `init` (see `_dataset_init`), Umeyama on the fit region;
    landmarks, in closed form (five detected points only when the frame is unknown: in a known frame
    they are a worse start than ICP, ~1 cm off); a scan already in FLAME's frame, a trimmed ICP from
    the identity (a rigid one for metric scans); anything else is searched over orientations, scales
    and centres. Draws from `rng`.
    """
    if init is not None:
        region = model.fit_region
        return umeyama(model.template[region], init[region], with_scale=not _metric_frame(scan)), float("nan")
    five = landmarks is not None and is_five_point(landmarks)
    if landmarks is not None and model.landmarks is not None and not (five and scan.frame_known):
        counterparts = five_point_landmarks(model.landmarks) if five else model.landmarks
        return align_landmarks(counterparts, landmarks, with_scale=not _metric_frame(scan)), float("nan")
    if scan.frame_known:
        skin = model.template[model.skin]
        m = skin[rng.choice(len(skin), min(len(skin), config.align_points), replace=False)]
        s = points[rng.choice(len(points), min(len(points), 8 * config.align_points), replace=False)]
        return trimmed_icp(m, s, cKDTree(s), identity(), 2 * config.align_iterations,
                           with_scale=not _metric_frame(scan))
    return align_search(model.template[model.skin], points, config, rng)


def _dataset_init(scan: ScanGeometry, model: _Model, config: RegistrationConfig) -> np.ndarray | None:
    """The dataset's FLAME fit (V, 3) in the scan frame when `config.init` asks for it and the scan has one
    of this model's topology; else None (the template start)."""
    if config.init != "dataset" or scan.init_vertices is None:
        return None
    init = np.asarray(scan.init_vertices, dtype=np.float64)
    if init.shape != model.template.shape or not np.isfinite(init).all():
        return None
    return init


def _aligned_scan(points: np.ndarray, faces: np.ndarray | None, sim0: Similarity) -> _AlignedScan:
    """The scan mapped into the aligned frame, with mesh normals when it has faces.

    Vertices without a normal (unreferenced, or only on degenerate faces) are dropped: they would
    mislead the point-to-plane terms of the fit, NICP and coverage.
    """
    aligned = sim0.invert_points(points)
    normals = vertex_normals_np(aligned, faces) if faces is not None else None
    if normals is not None:
        used = np.linalg.norm(normals, axis=1) > 0.5
        aligned, normals = aligned[used], normals[used]
    return _AlignedScan(points=aligned, normals=normals, tree=cKDTree(aligned))


def _fit_data(
    scan: _AlignedScan, landmarks: np.ndarray | None, sim0: Similarity, config: RegistrationConfig,
    rng: np.random.Generator,
) -> FitData:
    """The FLAME fit's scan side: `config.fit_points` random points (the fit's cost grows with them),
    their normals and the landmarks in the aligned frame (not five detected points: measured ~1 cm off,
    they made the fit worse). Draws from `rng` after the alignment search."""
    sub = rng.choice(len(scan.points), min(len(scan.points), config.fit_points), replace=False)
    if landmarks is not None and is_five_point(landmarks):
        landmarks = None  # detected points are ~1 cm off (docs/registration.md): an alignment, not a fit term
    return FitData(
        points=scan.points[sub], normals=None if scan.normals is None else scan.normals[sub],
        tree=cKDTree(scan.points[sub]), landmarks=None if landmarks is None else sim0.invert_points(landmarks),
    )


def _refine(
    fit: FitResult, model: _Model, scan: _AlignedScan, config: RegistrationConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NICP offsets on top of the FLAME fit: (vertices, offsets) (V, 3) in the aligned frame and the (V,)
    bool vertices where the scan shows skin (the only ones with a data term).

    Eyeballs stay put; boundary vertices get no data term (open edges would drag them onto clutter).
    A singular solve keeps the fit with zero offsets, and acceptance judges it like any other.
    """
    free = ~model.eyes
    candidates = free & ~boundary_vertices(model.faces, len(free))
    support = skin_support(fit.vertices, model.faces, scan.points, scan.normals, scan.tree, candidates, config)
    try:
        refined = nicp_offsets(fit.vertices, model.faces, scan.points, scan.normals, scan.tree, support, free, config)
    except (RuntimeError, np.linalg.LinAlgError):
        return fit.vertices, np.zeros_like(fit.vertices), support
    return refined.vertices, refined.offsets, support


def _metrics(
    model: _Model, scan: _AlignedScan, fit: FitResult, vertices: np.ndarray, offsets: np.ndarray,
    support: np.ndarray, align_score: float, config: RegistrationConfig, sample: np.ndarray,
) -> dict:
    """Distances of the fit and of the refined registration, coverage and offset size, in FLAME mm.

    The distances are measured from the scan points `sample` (indices, `config.metric_points` of them at
    most): exact closest points cost ~1 s per 20k points, and the median and p95 of 15k are as good.

    Aligned-frame units are divided by the fitted scale, so the thresholds mean the same in any scan
    unit. Scan points beyond `metric_gate` are not scored (clutter is not the registration's error).
    """
    scale = float(np.exp(fit.log_scale))
    per_mm = scale * 1e-3
    faces = model.faces
    region_faces = model.metric_region[faces].all(axis=1)
    skin_faces = ~model.eyes[faces].any(axis=1)
    gate = config.metric_gate * scale
    scored = scan.points[sample]
    fit_d = summary_mm(scan_to_surface(scored, fit.vertices, faces, region_faces, skin_faces, gate), per_mm)
    d = summary_mm(scan_to_surface(scored, vertices, faces, region_faces, skin_faces, gate), per_mm)
    cov = coverage(vertices, vertex_normals_np(vertices, faces), model.metric_region, scan.points,
                   scan.normals, scan.tree, config.coverage_radius * scale)
    off_mm = np.linalg.norm(offsets[support], axis=1) / per_mm  # judged where the scan shows skin
    n_shape = len(fit.shape)
    return {
        **d,
        "fit_median_mm": fit_d["median_mm"], "fit_p95_mm": fit_d["p95_mm"],
        "offset_p95_mm": float(np.quantile(off_mm, 0.95)) if len(off_mm) else 0.0,
        "coverage": cov, "scale_change": scale, "n_shape": n_shape,
        "identity_rms_sigma": float(np.linalg.norm(fit.shape) / np.sqrt(max(n_shape, 1))),
        "align_score_mm": align_score * 1e3 if np.isfinite(align_score) else float("nan"),
        "rival_cost_ratio": fit.rival_cost_ratio, "rival_p95_mm": fit.rival_p95_mm,
    }


def identity_limit(n_shape: int, quantile: float) -> float:
    """Largest plausible RMS of `n_shape` fitted identity coefficients (sigma units): the `quantile` of
    chi^2 with n_shape degrees of freedom, as an RMS. 100 components, 0.999: 1.22."""
    if n_shape <= 0:
        return float("inf")
    return float(np.sqrt(chi2.ppf(quantile, n_shape) / n_shape))


def acceptance(metrics: dict, config: RegistrationConfig, finite: bool = True) -> str | None:
    """The first acceptance rule of `config` that `metrics` break, as a one-line reason; None when all hold.

    Rules, in order: finite vertices; "scale_change" within `scale_range`; a plausible identity
    ("identity_rms_sigma" against :func:`identity_limit`); the FLAME fit alone ("fit_median_mm",
    "fit_p95_mm": a scan FLAME cannot explain is rejected even when free offsets could bend onto it);
    "coverage"; the final "median_mm" and "p95_mm"; "offset_p95_mm"; last, ambiguity ("rival_cost_ratio",
    "rival_p95_mm": the jaw re-check found a nearly as cheap fit far from the kept one). Every test but the
    last reads `not value <= limit`, so a NaN metric breaks its rule instead of passing it; the rival's
    metrics are NaN when no re-check ran, and then there is no rival to be ambiguous with.

    Args:
        metrics: the registration's metrics (see `Registration`); only the keys above (and "n_shape")
            are read.
        finite: whether the registered vertices are all finite (a property of the mesh, not a metric).
    """
    lo, hi = config.scale_range
    scale = metrics["scale_change"]
    if not finite:
        return "registration has non-finite vertices"
    if not lo <= scale <= hi:
        return f"fitted scale changed by {scale:.3g} (outside [{lo}, {hi}]): not a head at this size"
    limit = identity_limit(int(metrics.get("n_shape", 0)), config.identity_quantile)
    if not metrics.get("identity_rms_sigma", 0.0) <= limit:
        return (f"fitted identity {metrics['identity_rms_sigma']:.3g} sigma RMS > {limit:.3g}: FLAME needs an "
                "implausible head to explain the scan")
    if not metrics["fit_median_mm"] <= config.max_fit_median_mm:
        return (f"FLAME fit median {metrics['fit_median_mm']:.3g} mm > {config.max_fit_median_mm} mm: "
                "FLAME cannot explain the scan")
    if not metrics["fit_p95_mm"] <= config.max_fit_p95_mm:
        return (f"FLAME fit p95 {metrics['fit_p95_mm']:.3g} mm > {config.max_fit_p95_mm} mm: "
                "FLAME cannot explain the scan")
    if not metrics["coverage"] >= config.min_coverage:
        return f"coverage {metrics['coverage']:.3g} < {config.min_coverage}: scan misses much of the face"
    if not metrics["median_mm"] <= config.max_median_mm:
        return f"median {metrics['median_mm']:.3g} mm > {config.max_median_mm} mm"
    if not metrics["p95_mm"] <= config.max_p95_mm:
        return f"p95 {metrics['p95_mm']:.3g} mm > {config.max_p95_mm} mm"
    if not metrics["offset_p95_mm"] <= config.max_offset_p95_mm:
        return f"NICP offsets p95 {metrics['offset_p95_mm']:.3g} mm > {config.max_offset_p95_mm} mm"
    ratio, rival_mm = metrics.get("rival_cost_ratio", np.nan), metrics.get("rival_p95_mm", np.nan)
    if ratio < config.ambiguity_cost_ratio and rival_mm > config.max_ambiguity_mm:
        return (f"ambiguous: a fit with the jaw set otherwise costs only {100 * (ratio - 1):.1f} % more and differs "
                f"by {rival_mm:.3g} mm (p95) over the face: the scan does not pin the mouth and chin down")
    return None


def _registration(
    sim0: Similarity, fit: FitResult, vertices: np.ndarray, offsets: np.ndarray, metrics: dict,
    reason: str | None,
) -> Registration:
    """Pack the result: vertices back in the scan frame; parameters in FLAME metres with the fitted scale
    folded into one similarity, so that vertices = scale * (FLAME + offsets) @ rotation.T + translation."""
    scale = float(np.exp(fit.log_scale))
    final = Similarity(sim0.scale * scale, sim0.rotation, sim0.translation)
    params = {
        "shape": fit.shape, "expression": fit.expression, "pose": fit.pose, "translation": fit.translation,
        "offsets": offsets / scale, "scale": final.scale, "rotation": final.rotation,
        "similarity_translation": final.translation,
    }
    return Registration(
        vertices=sim0.apply(vertices), params=params, metrics=metrics, accepted=reason is None,
        reason=reason, converged=fit.converged,
    )


def register_scan(scan: ScanGeometry, assets: FlameAssets, config: RegistrationConfig | None = None) -> Registration:
    """Register `scan` to FLAME topology: align, fit FLAME, refine with NICP, measure, accept or reject.

    Raises ValueError only for unusable input (shapes, NaN, fewer than 100 points). A bad fit comes
    back as accepted=False with the reason `acceptance` gives. One random stream, seeded by the config,
    is drawn by the alignment search, the fit subsample and the metrics' sample, so a seed gives the same
    registration.
    """
    config = RegistrationConfig() if config is None else config
    points, faces, landmarks = _check_input(scan)
    rng = np.random.default_rng(config.seed)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    with _timed(times, "t_align_s"):
        model = _model_setup(assets, config)
        init = _dataset_init(scan, model, config)
        sim0, align_score = _initial_similarity(scan, points, landmarks, init, model, config, rng)
    aligned = _aligned_scan(points, faces, sim0)
    data = _fit_data(aligned, landmarks, sim0, config, rng)
    with _timed(times, "t_fit_s"):
        fit_scale = config.fit_scale and not _metric_frame(scan)
        x0 = None if init is None else fit_to_vertices(model.flame, sim0.invert_points(init), ~model.eyes, config,
                                                       fit_scale)
        fit = fit_flame(model.flame, data, model.fit_region, model.skin, config, fit_scale=fit_scale,
                        init=x0, core=model.fit_core)
    with _timed(times, "t_nicp_s"):
        vertices, offsets, support = _refine(fit, model, aligned, config)
    with _timed(times, "t_metrics_s"):
        n = len(aligned.points)
        sample = np.sort(rng.choice(n, min(n, config.metric_points), replace=False))
        metrics = _metrics(model, aligned, fit, vertices, offsets, support, align_score, config, sample)
    times["t_total_s"] = time.perf_counter() - t0
    metrics = {**metrics, **times}
    reason = acceptance(metrics, config, finite=bool(np.isfinite(vertices).all()))
    return _registration(sim0, fit, vertices, offsets, metrics, reason)
