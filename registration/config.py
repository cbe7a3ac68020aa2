"""Every knob of single-scan registration, with defaults that register a clean head scan in seconds."""

from __future__ import annotations

from dataclasses import dataclass

INIT_CHOICES = ("template", "dataset")


@dataclass(frozen=True)
class RegistrationConfig:
    """Settings of :func:`p3dmm.registration.register.register_scan`. Lengths are FLAME-frame metres.

    Args:
        n_shape, n_expression: FLAME components fitted (the first ones; more = slower, overfits noise).
        align_candidates: rotations tried without landmarks (the 24 axis permutations of the PCA frames);
            each is scored by a short trimmed similarity ICP, so any input orientation works.
        align_iterations: ICP steps per candidate (the best one then gets 3x as many).
        align_points: model and scan points subsampled for the alignment search (speed).
        fit_iterations: Levenberg-Marquardt steps of the FLAME fit at most; each stage may take its share
            of what the earlier stages left;
            a stage ends earlier when one step lowers the cost by less than `fit_tolerance` (relative).
            Correspondences (KD-trees) are rebuilt every step.
        fit_tolerance: relative cost decrease below which a stage has converged.
        fit_points: scan points subsampled for the scan-to-model term.
        fit_sigmas: Geman-McClure scale r^2 / (r^2 + sigma^2) of each stage, wide to tight: early stages
            let a far template feel the whole scan, the last one stops holes and clutter that passed the
            gate from pulling.
        fit_gates: correspondence search radius of each stage (same length as `fit_sigmas`): scan points
            farther than this from the model are clutter (hair, torso) and ignored.
        fit_max_step: no fitted vertex moves more than this many robust scales in one step (the
            correspondences a step is solved for only hold nearby).
        fit_jaw_starts: jaw openings (radians) the first stage starts from; the cheapest result goes on.
        fit_recheck_jaw, fit_recheck_steps: a fit that ends with the jaw more than 0.15 rad below
            `fit_recheck_jaw` runs its last two stages again (at most `fit_recheck_steps` LM steps each)
            from that opening and keeps the cheaper result. The wide stages close an open mouth when the
            head is far from the template (the closed template's lower lip settles on the scan's upper lip
            and a longer identity reaches the chin: measured 2.2 mm median, 46 mm p95 on an open-jaw head
            at FLAME's scale, accepted); the tight stages' cost tells the two apart. 0 turns it off.
        landmark_sigma: robust scale of the landmark term (landmarks are noisier than the surface).
        w_scan_to_model, w_model_to_scan, w_landmarks: data weights (landmarks are noisier: low weight).
        w_shape, w_expression, w_pose: Gaussian priors w |c|^2 on the coefficients in the model's own
            sigma units and on neck/jaw radians, against data costs of 1 per (1 mm residual)^2 averaged
            over each term's pairs (see `p3dmm.registration.fit`).
        prior_graduation: a stage of robust scale sigma weighs the identity and expression priors by
            (sigma / last sigma) ** this (2: the wide stages hold the identity near the mean, so clutter
            within the wide robust scale does not become identity; 0: the same prior at every stage).
        w_neck: prior on the neck rotation (radians). The face region is rigid above the neck, so neck and
            global rotation only trade (the face error does not depend on the split); the global rotation
            has no prior, so the split goes to it.
        w_scale: prior w log(scale)^2 on the fit's scale change. Strong on purpose: FLAME's identity has
            head-size components, so a free scale and the identity are nearly degenerate; unchecked, the fit
            shrank the identity and grew the scale 10x (every identity component then moved 10x more for
            its prior cost and overfitted). The alignment has set the scale; the identity carries the size.
        fit_scale: fit a global scale when the scan frame is unknown or not metric (fixed to 1 for metric scans).
        nicp_stiffness: membrane stiffness schedule of the offset solve, large to small; each level
            re-finds correspondences `nicp_inner` times. Relative to a data weight of 1 per vertex.
        nicp_gate: model-to-scan correspondences farther than this are dropped, and vertices of the FLAME
            fit without a scan point this close get no data term at all (hair, collar, holes): the fit
            is within ~1 mm where the scan shows skin, clutter is 5 mm and more off it.
        nicp_normal_dot: minimum cos angle between model and scan normals for a correspondence.
        nicp_point_weight: point-to-point share next to point-to-plane (keeps sliding in check).
        nicp_offset_prior: small pull of offsets to zero (vertices without data stay on the fit).
        coverage_radius: a face vertex is "covered" when a scan point is this close.
        metric_points: scan points (a seeded random subset) the distance metrics are measured from.
        metric_gate: scan points farther than this from the registration are not scored (clutter).
        max_median_mm, max_p95_mm, min_coverage: acceptance on the final scan-to-registration distances
            and on the share of face vertices with scan support.
        max_fit_median_mm, max_fit_p95_mm: acceptance on the FLAME fit alone (before offsets): a scan
            FLAME cannot explain (badly misaligned, not a head) is rejected even when free offsets could
            bend onto it. The p95 allows for hair over the hairline (good stress scans reach 4.1 mm).
        ambiguity_cost_ratio, max_ambiguity_mm: a registration is rejected as ambiguous when the other
            fit of the jaw re-check costs less than `ambiguity_cost_ratio` times the kept one and its face
            vertices differ from it by more than `max_ambiguity_mm` (p95): the scan does not pin the
            registration down (an open mouth or a long chin), and a wrong one would pass every surface
            distance. Re-checks that land near the kept fit differ by < 1 mm (p95).
        max_offset_p95_mm: the same idea on the NICP offsets, judged where the scan shows skin.
        scale_range: accepted range of the fitted scale relative to the initial alignment. With `w_scale`
            the fit moves it by a few percent at most; the rule catches a fit that blew up anyway (a
            configuration with the scale prior off).
        identity_quantile: the fitted identity must be plausible under FLAME's own prior: |shape|^2 (sigma
            units) below this quantile of chi^2 with n_shape degrees of freedom (0.999: RMS 1.22 sigma
            for 100 components). Head-sized spheres and ellipsoids fit to 0.2 mm only with identities of
            1.4-2.2 sigma RMS; heads registered within 1 mm measured 0.40-0.94.
        init: "template" starts from FLAME's mean head (landmarks or the alignment search place it);
            "dataset" starts from the FLAME fit the dataset ships with the scan (`ScanGeometry.init_vertices`,
            NPHM's ``flame.ply``), falling back to "template" for a scan without one.
    """

    n_shape: int = 100
    n_expression: int = 50
    align_candidates: int = 24
    align_iterations: int = 12
    align_points: int = 600
    fit_iterations: int = 120
    fit_tolerance: float = 1e-3
    fit_points: int = 6000
    fit_sigmas: tuple[float, ...] = (0.010, 0.005, 0.0025, 0.0015)
    fit_gates: tuple[float, ...] = (0.04, 0.02, 0.01, 0.006)
    landmark_sigma: float = 0.015
    fit_max_step: float = 0.5
    fit_jaw_starts: tuple[float, ...] = (0.0, 0.25)
    fit_recheck_jaw: float = 0.3
    fit_recheck_steps: int = 15
    w_scan_to_model: float = 1.0
    w_model_to_scan: float = 1.0
    w_landmarks: float = 0.05
    w_shape: float = 1e-3
    w_expression: float = 1e-3
    w_pose: float = 1e-2
    w_scale: float = 100.0
    w_neck: float = 1e-2
    prior_graduation: float = 2.0
    fit_scale: bool = True
    nicp_stiffness: tuple[float, ...] = (20.0, 5.0, 1.5, 0.5)
    nicp_inner: int = 2
    nicp_gate: float = 0.0025
    nicp_normal_dot: float = 0.5
    nicp_point_weight: float = 0.1
    nicp_offset_prior: float = 1e-3
    coverage_radius: float = 0.002
    metric_gate: float = 0.01
    metric_points: int = 15000
    max_median_mm: float = 1.5
    max_p95_mm: float = 5.0
    min_coverage: float = 0.9
    max_fit_median_mm: float = 3.0
    max_fit_p95_mm: float = 5.0
    max_offset_p95_mm: float = 6.0
    ambiguity_cost_ratio: float = 1.05
    max_ambiguity_mm: float = 10.0
    scale_range: tuple[float, float] = (0.6, 1.8)
    identity_quantile: float = 0.999
    seed: int = 0
    init: str = "template"

    def __post_init__(self) -> None:
        if len(self.fit_sigmas) != len(self.fit_gates) or not self.fit_sigmas:
            raise ValueError(f"fit_sigmas and fit_gates must be non-empty and of one length, got "
                             f"{len(self.fit_sigmas)} and {len(self.fit_gates)}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"registration init must be one of {', '.join(INIT_CHOICES)}, got {self.init!r}")
