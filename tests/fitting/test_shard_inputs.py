"""`p3dmm fit --shards`: held-out views with their ground truth, shared identity per subject, the
mean-shape baseline, `p3dmm eval` on the exported truth, and the truth of a scan in its own frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from p3dmm.cli import main
from p3dmm.fitting.shard_inputs import export_split
from p3dmm.flame.cameras import Cameras
from p3dmm.flame.files import load_assets
from p3dmm.flame.mesh import load_mesh, save_mesh
from p3dmm.flame.model import FLAME
from p3dmm.flame.render import RayCaster
from p3dmm.flame.rotations import axis_angle_to_matrix
from p3dmm.flame.similarity import Similarity
from p3dmm.pipeline.datasets import reader
from p3dmm.pipeline.jobs.render import RenderConfig, run_render
from p3dmm.pipeline.registered import output_name, write_registered
from p3dmm.pipeline.shards.reader import iter_samples, shard_paths
from p3dmm.training.export import save_priors
from p3dmm.training.network import NetworkConfig, PriorNet
from p3dmm.training.synthetic import write_flame_shards


@pytest.fixture(scope="module")
def setup(tmp_path_factory, flame_1000):
    root = tmp_path_factory.mktemp("shard_fit")
    flame = flame_1000
    write_flame_shards(root / "shards", flame, train_subjects=1, val_subjects=2, views=2, size=48)
    config = NetworkConfig(backbone="vit_small_patch14_dinov2", output_size=32, outputs=("normal", "uv"),
                           shared_backbone=True, head_width=16, head_depth=1, head_heads=2,
                           backbone_kwargs={"depth": 1, "embed_dim": 16, "num_heads": 2})
    # seeded: torch's start seed differs per process, and some random networks predict nothing the fit can use
    # (every pixel an outlier, no UV match), which leaves every shape at zero and the subjects indistinguishable
    torch.manual_seed(0)
    save_priors(config, PriorNet(config).state_dict(), root / "priors.pt")
    return root, flame


def _fit(root, flame, out, *extra):
    return main(["fit", "--shards", str(root / "shards"), "--priors", str(root / "priors.pt"), "--flame", str(flame),
                 "--out", str(out), "--batch-size", "4", "--steps", "3", "--init-steps", "10", "--raster-size", "32", "--progress", "false",
                 *extra])


def test_val_views_exported_with_truth_that_matches_the_images(setup):
    root, flame = setup
    out = root / "fits"
    assert _fit(root, flame, out, "--subjects", str(root / "fits" / "inputs" / "subjects.json")) == 0
    subjects = json.loads((out / "inputs" / "subjects.json").read_text())
    samples = {s.key: s for s in iter_samples(shard_paths(root / "shards", "val"))}
    assert sorted(subjects) == sorted(samples) and len(samples) == 4  # 2 subjects x 2 views, no train view
    for key, sample in samples.items():
        assert subjects[key] == sample.meta["subject"]
        assert (out / "inputs" / "images" / f"{key}.jpg").is_file()
        # the exported posed truth, seen by the sample's camera, covers the sample's FLAME foreground
        verts, faces = load_mesh(out / "inputs" / "gt" / f"{key}.posed.ply")
        cam = sample.meta["camera"]
        hits = RayCaster(verts, faces).cast(Cameras(K=torch.tensor(cam["K"])[None], R=torch.tensor(cam["R"])[None],
                                                    t=torch.tensor(cam["t"])[None], image_size=tuple(cam["size"])))
        drawn, stored = hits.face_id >= 0, sample.mask
        assert (drawn & stored).sum() / (drawn | stored).sum() > 0.95
        neutral, _ = load_mesh(out / "inputs" / "gt" / f"{key}.neutral.ply")
        assert np.abs(neutral - verts).max() > 1e-3  # posed differs from the identity-only mesh
    # multi-image mode: the views of one subject share one shape, the subjects differ
    shapes = {key: json.loads((out / f"{key}.json").read_text())["shape"] for key in samples}
    by_subject: dict[str, list] = {}
    for key, shape in shapes.items():
        by_subject.setdefault(subjects[key], []).append(shape)
    assert all(np.allclose(group[0], group[1]) for group in by_subject.values())
    first, second = (group[0] for group in by_subject.values())
    assert np.abs(first).max() > 1e-4 and np.abs(second).max() > 1e-4, "the fit did not move the shape"
    assert not np.allclose(first, second, rtol=1e-6, atol=0)
    assert main(["eval", "--pred", str(out), "--gt", str(out / "inputs" / "gt"), "--flame", str(flame)]) == 0
    result = json.loads((out / "eval" / "eval.json").read_text())
    assert set(result["images"]) == set(samples) and result["summary"]["neutral"]["images"] == 4


def test_mean_shape_baseline_fits_no_identity(setup):
    root, flame = setup
    out = root / "baseline"
    assert _fit(root, flame, out, "--shape", "false", "--limit", "2") == 0
    fitted = sorted(out.glob("*.json"))
    assert len(fitted) == 2
    for path in fitted:
        params = json.loads(path.read_text())
        assert not np.any(params["shape"]) and np.any(params["expression"])
    neutral, _ = load_mesh(fitted[0].with_suffix(".neutral.ply"))
    assert np.allclose(neutral, load_assets(flame).model.v_template, atol=1e-6)  # the mean shape itself


def test_missing_split_is_a_clear_error(setup, capsys):
    root, flame = setup
    assert _fit(root, flame, root / "nosplit", "--split", "test") != 0
    assert "no shards of split 'test'" in capsys.readouterr().err


def _registered_in_own_frame(root, flame_dir) -> tuple:
    """A generic scan stored in its own frame (x1.7, rotated, moved) and its registration: FLAME vertices
    `x` of known parameters, written as the scan-frame registration y = 1.7 x R^T + t. Built by hand (no
    fit), so the FLAME-frame truth is known exactly."""
    assets = load_assets(flame_dir)
    rng = np.random.default_rng(5)
    pose = np.zeros(15)
    pose[[0, 1, 6]] = [0.1, -0.15, 0.2]  # global pitch, yaw, an open jaw
    params = {"shape": rng.normal(0, 1, assets.model.num_shape), "expression": rng.normal(0, 1, assets.model.num_expression),
              "pose": pose, "translation": np.array([0.004, -0.002, 0.003])}
    flame = FLAME(assets, dtype=torch.float64)
    with torch.no_grad():
        x = flame(**{k: torch.tensor(v)[None] for k, v in params.items()}).vertices[0].numpy()
    to_scan = Similarity(1.7, axis_angle_to_matrix(torch.tensor([0.3, 1.2, -0.4], dtype=torch.float64)).numpy(),
                         np.array([0.2, -0.1, 0.5]))
    save_mesh(root / "scans" / "head.ply", to_scan.apply(x), assets.model.faces)
    record = next(reader("generic").iter_records(root / "scans"))
    (root / "reg").mkdir()
    (root / "reg" / "job.json").write_text(json.dumps({"source": "generic", "flame_dir": str(flame_dir)}))
    write_registered(root / "reg" / "registered" / f"{output_name(record.scan_id)}.npz", record, to_scan.apply(x),
                     accepted=True, reason=None, metrics={},
                     params={**params, "scale": to_scan.scale, "rotation": to_scan.rotation,
                             "similarity_translation": to_scan.translation})
    return x, assets.model.faces


def test_posed_truth_is_in_the_frame_of_the_targets_when_the_scan_has_its_own(tmp_path, flame_1000):
    """Issue 12: a registration whose similarity is not the identity (FaceScape's scale, a generic scan in its
    own frame). The targets and cameras are FLAME-frame, and so must the exported posed truth be: it lands on
    the rendered mask at the rendered depth, and differs from the neutral truth by pose, not by a scale."""
    (tmp_path / "scans").mkdir()
    flame_vertices, _ = _registered_in_own_frame(tmp_path, flame_1000)
    run_render([tmp_path / "reg"], tmp_path / "shards", RenderConfig(views=2, size=48, val_fraction=0.0),
               num_cpus=1, progress=False)
    _, gt, subjects = export_split(tmp_path / "shards", "train", tmp_path / "inputs", flame_1000)
    samples = list(iter_samples(shard_paths(tmp_path / "shards", "train")))
    assert sorted(json.loads(subjects.read_text())) == sorted(s.key for s in samples) and len(samples) == 2
    for sample in samples:
        posed, faces = load_mesh(gt / f"{sample.key}.posed.ply")
        neutral, _ = load_mesh(gt / f"{sample.key}.neutral.ply")
        error = np.abs(posed - flame_vertices).max()
        assert error < 1e-5, f"posed truth {error:.3g} m off the registration in the FLAME frame"
        cam = sample.meta["camera"]
        hits = RayCaster(posed, faces).cast(Cameras(K=torch.tensor(cam["K"])[None], R=torch.tensor(cam["R"])[None],
                                                    t=torch.tensor(cam["t"])[None], image_size=tuple(cam["size"])))
        drawn, stored = hits.face_id >= 0, sample.mask
        assert (drawn & stored).sum() / (drawn | stored).sum() > 0.95
        both = drawn & stored
        assert np.median(np.abs(hits.depth[both] - sample.depth[both])) < 5e-4  # metres; depth.png holds 0.1 mm
        spread = [np.sqrt(((v - v.mean(axis=0)) ** 2).sum(axis=1).mean()) for v in (posed, neutral)]
        assert abs(spread[0] / spread[1] - 1) < 0.05 and np.linalg.norm(posed.mean(0) - neutral.mean(0)) < 0.02
