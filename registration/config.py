"""Every knob of single-scan registration, with defaults that register a clean head scan in seconds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegistrationConfig:
    """Settings of :func:`p3dmm.registration.register.register_scan`. Lengths are FLAME-frame metres.

    Args:
        n_shape, n_expression: FLAME components fitted (the first ones; more = slower, overfits noise).
        align_candidates: rotations tried without landmarks (the 24 axis permutations of the PCA frames);
            each is scored by a short trimmed similarity ICP, so any input orientation works.
        align_iterations: ICP steps per candidate (the best one then gets 3x as many).
        align_points: model and scan points subsampled for the alignment search (speed).
        fit_iterations: Adam steps of the FLAME fit; correspondences are rebuilt every
            `fit_update_every` steps (KD-tree), which keeps each step a cheap forward/backward.
        fit_points: scan points subsampled for the scan-to-model term.
        fit_lr: Adam learning rate for coefficients (pose/translation/scale use fixed fractions of it).
        fit_gate: scan points farther than this from the model are clutter (hair, torso) and ignored;
            it shrinks linearly to `fit_gate_final` over the fit as the model closes in.
        robust_scale: sigma of the Geman-McClure loss r^2 / (r^2 + sigma^2): residuals well beyond it
            (holes, clutter that passed the gate) stop pulling.
        w_scan_to_model, w_model_to_scan, w_landmarks: data weights (landmarks are noisier: low weight).
        w_shape, w_expression, w_pose: Gaussian priors on the unit-variance coefficients / radians.
        fit_scale: fit a global scale when the scan frame is unknown or not metric (fixed to 1 for metric scans).
        nicp_stiffness: membrane stiffness schedule of the offset solve, large to small; each level
            re-finds correspondences `nicp_inner` times. Relative to a data weight of 1 per vertex.
        nicp_gate: model-to-scan correspondences farther than this are dropped (clutter, holes).
        nicp_normal_dot: minimum cos angle between model and scan normals for a correspondence.
        nicp_point_weight: point-to-point share next to point-to-plane (keeps sliding in check).
        nicp_offset_prior: small pull of offsets to zero (vertices without data stay on the fit).
        coverage_radius: a face vertex is "covered" when a scan point is this close.
        metric_gate: scan points farther than this from the registration are not scored (clutter).
        max_median_mm, max_p95_mm, min_coverage: acceptance on the final scan-to-registration distances.
        max_fit_median_mm, max_fit_p95_mm: acceptance on the FLAME fit alone (before offsets): a scan
            FLAME cannot explain (not a head, badly misaligned) is rejected even when free offsets could
            bend onto it. Measured: synthetic heads 0.25-0.35 / 0.8-0.95 mm, head-sized spheres
            0.6-0.9 / 5.1-6.8 mm.
        max_offset_p95_mm: the same idea on the NICP offsets.
        scale_range: accepted range of the fitted scale relative to the initial alignment.
    """

    n_shape: int = 100
    n_expression: int = 50
    align_candidates: int = 24
    align_iterations: int = 12
    align_points: int = 600
    fit_iterations: int = 300
    fit_update_every: int = 10
    fit_points: int = 6000
    fit_lr: float = 0.05
    fit_gate: float = 0.02
    fit_gate_final: float = 0.006
    robust_scale: float = 0.003
    w_scan_to_model: float = 1.0
    w_model_to_scan: float = 1.0
    w_landmarks: float = 0.05
    w_shape: float = 1e-3
    w_expression: float = 1e-3
    w_pose: float = 1e-2
    fit_scale: bool = True
    nicp_stiffness: tuple[float, ...] = (20.0, 5.0, 1.5, 0.5)
    nicp_inner: int = 2
    nicp_gate: float = 0.005
    nicp_normal_dot: float = 0.5
    nicp_point_weight: float = 0.1
    nicp_offset_prior: float = 1e-3
    coverage_radius: float = 0.002
    metric_gate: float = 0.01
    max_median_mm: float = 1.5
    max_p95_mm: float = 5.0
    min_coverage: float = 0.8
    max_fit_median_mm: float = 3.0
    max_fit_p95_mm: float = 4.0  # raw MVS meshes (noise, holes) reach 3-3.5 mm with good fits
    max_offset_p95_mm: float = 6.0
    scale_range: tuple[float, float] = (0.7, 1.4)
    seed: int = 0
