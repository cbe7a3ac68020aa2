"""`acceptance`: each rule of the config, in order, as a pure function of the metrics (no registration run)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p3dmm.registration.config import RegistrationConfig
from p3dmm.registration.register import acceptance, identity_limit

CONFIG = RegistrationConfig()

# a good registration, measured on a synthetic head (tests/registration/test_register.py, seed 1)
GOOD = {
    "mean_mm": 0.27, "median_mm": 0.23, "p95_mm": 0.69, "n_points": 7026, "fit_median_mm": 0.32,
    "fit_p95_mm": 0.88, "offset_p95_mm": 1.6, "coverage": 0.98, "scale_change": 1.0,
    "align_score_mm": float("nan"), "t_total_s": 1.0, "n_shape": 100, "identity_rms_sigma": 0.6,
}

# (metric, a value that breaks its rule under the default config, the reason it gives)
BROKEN = [
    ("scale_change", 0.5, "fitted scale changed by 0.5 (outside [0.6, 1.8]): not a head at this size"),
    ("scale_change", 1.9, "fitted scale changed by 1.9 (outside [0.6, 1.8]): not a head at this size"),
    ("identity_rms_sigma", 1.4,
     "fitted identity 1.4 sigma RMS > 1.22: FLAME needs an implausible head to explain the scan"),
    ("fit_median_mm", 3.25, "FLAME fit median 3.25 mm > 3.0 mm: FLAME cannot explain the scan"),
    ("fit_p95_mm", 5.15, "FLAME fit p95 5.15 mm > 5.0 mm: FLAME cannot explain the scan"),
    ("coverage", 0.44, "coverage 0.44 < 0.9: scan misses much of the face"),
    ("median_mm", 1.75, "median 1.75 mm > 1.5 mm"),
    ("p95_mm", 5.5, "p95 5.5 mm > 5.0 mm"),
    ("offset_p95_mm", 6.3, "NICP offsets p95 6.3 mm > 6.0 mm"),
]
RULE_ORDER = ["scale_change", "identity_rms_sigma", "fit_median_mm", "fit_p95_mm", "coverage", "median_mm", "p95_mm", "offset_p95_mm"]


def test_good_metrics_are_accepted():
    assert acceptance(GOOD, CONFIG) is None
    assert acceptance(GOOD, CONFIG, finite=True) is None


def test_limits_themselves_are_accepted():
    lo, hi = CONFIG.scale_range
    at_limits = {
        **GOOD, "fit_median_mm": CONFIG.max_fit_median_mm, "fit_p95_mm": CONFIG.max_fit_p95_mm,
        "coverage": CONFIG.min_coverage, "median_mm": CONFIG.max_median_mm, "p95_mm": CONFIG.max_p95_mm,
        "offset_p95_mm": CONFIG.max_offset_p95_mm,
        "identity_rms_sigma": identity_limit(100, CONFIG.identity_quantile),
    }
    assert acceptance({**at_limits, "scale_change": lo}, CONFIG) is None
    assert acceptance({**at_limits, "scale_change": hi}, CONFIG) is None


@pytest.mark.parametrize(("key", "value", "reason"), BROKEN, ids=[f"{k}={v}" for k, v, _ in BROKEN])
def test_each_rule_rejects_with_its_message(key, value, reason):
    assert acceptance({**GOOD, key: value}, CONFIG) == reason


@pytest.mark.parametrize("key", RULE_ORDER)
def test_nan_metric_is_rejected(key):
    reason = acceptance({**GOOD, key: math.nan}, CONFIG)
    assert reason is not None and "nan" in reason


def test_non_finite_vertices_come_first():
    worst = {**GOOD, **{key: value for key, value, _ in BROKEN}}
    assert acceptance(GOOD, CONFIG, finite=False) == "registration has non-finite vertices"
    assert acceptance(worst, CONFIG, finite=False) == "registration has non-finite vertices"


def test_first_broken_rule_is_the_reason():
    # break every rule from the last one up: the reason is always the earliest rule still broken
    broken = dict(GOOD)
    for key in reversed(RULE_ORDER):
        value, reason = next((v, r) for k, v, r in BROKEN if k == key)
        broken[key] = value
        assert acceptance(broken, CONFIG) == reason


def test_thresholds_come_from_the_config():
    loose = RegistrationConfig(max_median_mm=2.0, max_fit_p95_mm=6.0, min_coverage=0.4, scale_range=(0.4, 2.0))
    for key, value, _ in BROKEN:
        if key in ("median_mm", "fit_p95_mm", "coverage", "scale_change"):
            assert acceptance({**GOOD, key: value}, loose) is None, key
    assert acceptance({**GOOD, "median_mm": 2.5}, loose) == "median 2.5 mm > 2.0 mm"


def test_identity_limit_follows_chi_square():
    # an RMS of n N(0, 1) coefficients rarely exceeds the limit; fewer components allow more spread
    assert identity_limit(100, 0.999) == pytest.approx(1.22, abs=0.01)
    assert identity_limit(10, 0.999) > identity_limit(100, 0.999) > identity_limit(300, 0.999)
    rms = np.linalg.norm(np.random.default_rng(0).normal(size=(20000, 100)), axis=1) / 10.0
    assert (rms > identity_limit(100, 0.999)).mean() < 0.003


def test_a_nearly_as_cheap_rival_far_away_is_ambiguous():
    # the jaw re-check's other fit costs 1.1 % more and sits 41 mm away (an open-jaw head at FLAME's scale,
    # whose kept fit passed every surface distance): rejected, the rule last and with its figures
    rival = {"rival_cost_ratio": 1.011, "rival_p95_mm": 41.1}
    assert acceptance({**GOOD, **rival}, CONFIG) == (
        "ambiguous: a fit with the jaw set otherwise costs only 1.1 % more and differs by 41.1 mm (p95) over the "
        "face: the scan does not pin the mouth and chin down")
    assert acceptance({**GOOD, **rival, "median_mm": 1.75}, CONFIG) == "median 1.75 mm > 1.5 mm"
    # a rival that lands on the kept fit, a far one that costs clearly more, and no re-check at all pass
    assert acceptance({**GOOD, "rival_cost_ratio": 1.007, "rival_p95_mm": 0.6}, CONFIG) is None
    assert acceptance({**GOOD, "rival_cost_ratio": 1.19, "rival_p95_mm": 42.4}, CONFIG) is None
    assert acceptance({**GOOD, "rival_cost_ratio": math.nan, "rival_p95_mm": math.nan}, CONFIG) is None
    assert acceptance({**GOOD, **rival}, RegistrationConfig(ambiguity_cost_ratio=1.01)) is None
