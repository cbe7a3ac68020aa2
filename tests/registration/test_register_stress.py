"""Registration on the stress setting: identity at FLAME's own scale, hair, torso, holes, decimation.

A 2,000-vertex synthetic FLAME with real FLAME's identity spread (`identity="flame"`) and stress scans in
the NPHM layout (hair cap without skin under it, torso bridged under a cut neck, fragments, scanner holes
and decimation), the generic layout (landmarks, a turned neck) and the FaceScape multiview layout (a known
but not metric frame, so the fit's scale is free). Measured figures: docs/registration.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from p3dmm.flame.files import load_assets
from p3dmm.flame.synth import write_synthetic_flame
from p3dmm.pipeline.datasets import reader, reader_options, write_synthetic
from p3dmm.pipeline.report.registration_eval import correspondence_errors_mm
from p3dmm.pipeline.synth.scans import read_truth
from p3dmm.registration.register import register_scan


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stress")
    write_synthetic_flame(root / "flame", n_vertices=2000, seed=0, identity="flame")
    assets = load_assets(root / "flame")
    scans = {}
    for layout, seed in (("nphm", 11), ("generic", 6), ("facescape-mview", 7)):
        write_synthetic(layout, root / layout, assets, subjects=1, expressions=1, seed=seed, stress=True)
        module = reader(layout)
        record = next(iter(module.iter_records(root / layout, **reader_options(layout, {}, root / layout))))
        scans[layout] = (module.load_scan(record), read_truth(root / layout, record.scan_id))
    return assets, scans


@pytest.fixture(scope="module")
def registered(world):
    assets, scans = world
    return {layout: register_scan(scan, assets) for layout, (scan, _) in scans.items()}


@pytest.mark.parametrize("layout", ["nphm", "generic"])
def test_flame_scale_identity_registers_within_the_bar(world, registered, layout):
    assets, scans = world
    _, truth = scans[layout]
    reg = registered[layout]
    err = correspondence_errors_mm(reg.vertices, truth["vertices"], assets.masks["face"], float(truth["metres_per_unit"]))
    print(f"{layout}: median {np.median(err):.2f} mm p95 {np.quantile(err, 0.95):.2f} mm {reg.metrics}")
    assert reg.accepted, reg.reason
    assert np.median(err) <= 1.0
    assert np.quantile(err, 0.95) <= 3.0
    # the fitted identity is shrunk towards the mean (a MAP fit of a partly hidden head), not collapsed
    true_shape = truth["shape"][: len(reg.params["shape"])]
    ratio = np.linalg.norm(reg.params["shape"]) / np.linalg.norm(true_shape)
    assert 0.4 <= ratio <= 1.1


def test_scalp_under_hair_stays_on_the_flame_fit(world, registered):
    # the NPHM stress scan has hair 5-20 mm off the scalp and no skin under it: offsets there stay small
    assets, _ = world
    offsets_mm = np.linalg.norm(registered["nphm"].params["offsets"], axis=1) * 1e3
    scalp = np.asarray(assets.masks["scalp"])
    assert np.quantile(offsets_mm[scalp], 0.95) < 2.0


def test_free_scale_does_not_trade_against_the_identity(world, registered):
    # FLAME's identity has head-size components: unchecked, a free scale grew 10x while the identity
    # shrank the head (every identity component then overfitted, 14 mm off); the scale prior holds it.
    # The multiview layout is the hardest one (docs/registration.md): this scan measured 1.5 mm, so the
    # bar here is the acceptance band's (accepted scans must be within 2 mm), not the 1 mm goal
    assets, scans = world
    _, truth = scans["facescape-mview"]
    reg = registered["facescape-mview"]
    err = correspondence_errors_mm(reg.vertices, truth["vertices"], assets.masks["face"], float(truth["metres_per_unit"]))
    assert reg.accepted, reg.reason
    assert abs(reg.metrics["scale_change"] - 1.0) < 0.05
    assert np.median(err) <= 2.0


def test_an_open_mouth_is_not_accepted_closed(world, tmp_path):
    # an open jaw (0.31 rad) on a head at FLAME's scale: the wide stages closed the mouth and a longer
    # identity reached the chin, every surface distance passed, and the scan was accepted 2.2 mm off (46 mm
    # p95 at the chin). The jaw re-check reopens it; the closed rival costs only 1 % more and lies 41 mm
    # away, so the scan is rejected as ambiguous rather than accepted wrong (docs/registration.md)
    assets, _ = world
    write_synthetic("nphm", tmp_path, assets, subjects=2, expressions=1, seed=7)
    record = list(reader("nphm").iter_records(tmp_path))[1]
    truth = read_truth(tmp_path, record.scan_id)
    assert truth["pose"][6] > 0.3  # the scan this test is about
    reg = register_scan(reader("nphm").load_scan(record), assets)
    err = correspondence_errors_mm(reg.vertices, truth["vertices"], assets.masks["face"], float(truth["metres_per_unit"]))
    print(f"median {np.median(err):.2f} mm, jaw {reg.params['pose'][6]:.2f}, {reg.reason}")
    assert reg.params["pose"][6] > 0.15
    assert np.isfinite(reg.metrics["rival_cost_ratio"]) and np.isfinite(reg.metrics["rival_p95_mm"])
    assert not reg.accepted or np.median(err) <= 2.0
