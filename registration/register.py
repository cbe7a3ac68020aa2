"""Register one scan to FLAME topology: align, fit FLAME, refine offsets, measure, accept or reject.

`register_scan` is a pure function (no files, no Ray); a driver decides what to do with a rejection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.model import FLAME
from p3dmm.flame.scan import ScanGeometry
from p3dmm.flame.similarity import Similarity, identity

from .align import align_landmarks, align_search
from .config import RegistrationConfig
from .fit import FitData, fit_flame
from .geometry import boundary_vertices, vertex_normals
from .metrics import coverage, scan_to_surface, summary_mm
from .nicp import nicp_offsets

FIT_REGION_MASKS = ("face", "forehead", "nose", "lips", "eye_region")
METRIC_REGION_MASKS = ("face",)
EYEBALL_MASKS = ("left_eyeball", "right_eyeball")


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
        if np.isfinite(lm).all(axis=1).sum() < 6:
            lm = None
    return v, f, lm


def register_scan(scan: ScanGeometry, assets: FlameAssets, config: RegistrationConfig | None = None) -> Registration:
    """Register `scan` to FLAME topology; see the module docs of align, fit, nicp and metrics.

    Raises ValueError only for unusable input (shapes, NaN, fewer than 100 points). A bad fit comes
    back as accepted=False with a reason.
    """
    config = RegistrationConfig() if config is None else config
    points, faces, landmarks = _check_input(scan)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    model = assets.model
    num_v = model.v_template.shape[0]
    n_shape = min(config.n_shape, int(model.num_shape))
    n_expr = min(config.n_expression, model.shapedirs.shape[2] - int(model.num_shape))
    flame = FLAME(assets, n_shape=n_shape, n_expression=n_expr)
    flame_faces = np.asarray(model.faces, dtype=np.int64)
    eyes = _mask(assets, EYEBALL_MASKS, num_v)
    fit_region = _mask(assets, FIT_REGION_MASKS, num_v) & ~eyes
    metric_region = _mask(assets, METRIC_REGION_MASKS, num_v) & ~eyes
    skin = np.nonzero(~eyes)[0]
    with torch.no_grad():
        zero = flame()
    template = zero.vertices[0].double().numpy()

    # 1. initial similarity FLAME metres -> scan frame
    align_score = float("nan")
    if landmarks is not None and zero.landmarks is not None:
        sim0 = align_landmarks(zero.landmarks[0].double().numpy(), landmarks,
                               with_scale=not (scan.frame_known and scan.metric))
    elif scan.frame_known:
        sim0 = identity()
    else:
        sim0, align_score = align_search(template[skin], points, config, rng)
    times["t_align_s"] = time.perf_counter() - t0

    # 2. scan in the aligned frame, normals, KD-tree
    aligned = sim0.invert_points(points)
    normals = vertex_normals(aligned, faces) if faces is not None else None
    if normals is not None:
        used = np.linalg.norm(normals, axis=1) > 0.5
        aligned, normals = aligned[used], normals[used]
    tree = cKDTree(aligned)
    sub = rng.choice(len(aligned), min(len(aligned), config.fit_points), replace=False)
    data = FitData(
        points=aligned[sub], normals=None if normals is None else normals[sub], tree=cKDTree(aligned[sub]),
        landmarks=None if landmarks is None else sim0.invert_points(landmarks),
    )

    t1 = time.perf_counter()
    fit = fit_flame(flame, data, fit_region, skin, config, fit_scale=config.fit_scale and not (scan.frame_known and scan.metric))
    times["t_fit_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    free = ~eyes
    data_v = free & ~boundary_vertices(flame_faces, num_v)
    scan_normals = normals if normals is not None else None
    try:
        refined = nicp_offsets(fit.vertices, flame_faces, aligned, scan_normals, tree, data_v, free, config)
        reg_aligned, offsets = refined.vertices, refined.offsets
    except (RuntimeError, np.linalg.LinAlgError):  # singular system: keep the fit, judge it below
        reg_aligned, offsets = fit.vertices, np.zeros_like(fit.vertices)
    times["t_nicp_s"] = time.perf_counter() - t2

    # 3. metrics in FLAME mm (aligned frame units / exp(log_scale))
    t3 = time.perf_counter()
    scale = float(np.exp(fit.log_scale))
    per_mm = scale * 1e-3
    region_faces = metric_region[flame_faces].all(axis=1)
    skin_faces = ~eyes[flame_faces].any(axis=1)
    gate = config.metric_gate * scale
    fit_d = summary_mm(scan_to_surface(aligned, fit.vertices, flame_faces, region_faces, skin_faces, gate), per_mm)
    d = summary_mm(scan_to_surface(aligned, reg_aligned, flame_faces, region_faces, skin_faces, gate), per_mm)
    cov = coverage(reg_aligned, vertex_normals(reg_aligned, flame_faces), metric_region, aligned,
                   scan_normals, tree, config.coverage_radius * scale)
    off_mm = np.linalg.norm(offsets[free], axis=1) / per_mm
    times["t_metrics_s"] = time.perf_counter() - t3
    times["t_total_s"] = time.perf_counter() - t0
    metrics = {
        **d,
        "fit_median_mm": fit_d["median_mm"], "fit_p95_mm": fit_d["p95_mm"],
        "offset_p95_mm": float(np.quantile(off_mm, 0.95)) if len(off_mm) else 0.0,
        "coverage": cov, "scale_change": scale,
        "align_score_mm": align_score * 1e3 if np.isfinite(align_score) else float("nan"),
        **times,
    }

    reason = None
    lo, hi = config.scale_range
    if not np.isfinite(reg_aligned).all():
        reason = "registration has non-finite vertices"
    elif not lo <= scale <= hi:
        reason = f"fitted scale changed by {scale:.3g} (outside [{lo}, {hi}]): not a head at this size"
    elif not fit_d["median_mm"] <= config.max_fit_median_mm:
        reason = f"FLAME fit median {fit_d['median_mm']:.3g} mm > {config.max_fit_median_mm} mm: FLAME cannot explain the scan"
    elif not fit_d["p95_mm"] <= config.max_fit_p95_mm:
        reason = f"FLAME fit p95 {fit_d['p95_mm']:.3g} mm > {config.max_fit_p95_mm} mm: FLAME cannot explain the scan"
    elif not metrics["coverage"] >= config.min_coverage:
        reason = f"coverage {metrics['coverage']:.3g} < {config.min_coverage}: scan misses much of the face"
    elif not d["median_mm"] <= config.max_median_mm:
        reason = f"median {d['median_mm']:.3g} mm > {config.max_median_mm} mm"
    elif not d["p95_mm"] <= config.max_p95_mm:
        reason = f"p95 {d['p95_mm']:.3g} mm > {config.max_p95_mm} mm"
    elif not metrics["offset_p95_mm"] <= config.max_offset_p95_mm:
        reason = f"NICP offsets p95 {metrics['offset_p95_mm']:.3g} mm > {config.max_offset_p95_mm} mm"

    final = Similarity(sim0.scale * scale, sim0.rotation, sim0.translation)
    params = {
        "shape": fit.shape, "expression": fit.expression, "pose": fit.pose, "translation": fit.translation,
        "offsets": offsets / scale, "scale": final.scale, "rotation": final.rotation,
        "similarity_translation": final.translation,
    }
    return Registration(
        vertices=sim0.apply(reg_aligned), params=params, metrics=metrics, accepted=reason is None,
        reason=reason, converged=fit.converged,
    )
