"""`p3dmm fit` end to end on a folder: bad images recorded and skipped, outputs written, reruns skip."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from p3dmm.cli import main
from p3dmm.training.export import load_priors, save_priors
from p3dmm.training.network import NetworkConfig, PriorNet


def _setup(tmp_path, flame):
    config = NetworkConfig(backbone="vit_small_patch14_dinov2", output_size=32, outputs=("normal", "uv"),
                           shared_backbone=True, head_width=16, head_depth=1, head_heads=2,
                           backbone_kwargs={"depth": 1, "embed_dim": 16, "num_heads": 2})
    save_priors(config, PriorNet(config).state_dict(), tmp_path / "priors.pt")
    assert load_priors(tmp_path / "priors.pt").config == config
    return flame


def test_fit_on_ray_with_two_cpus(tmp_path, capsys, flame_1000):
    flame = _setup(tmp_path, flame_1000)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "fits"
    argv = ["fit", "--images", str(images), "--priors", str(tmp_path / "priors.pt"), "--flame", str(flame),
            "--out", str(out), "--batch-size", "2", "--steps", "3", "--init-steps", "10", "--raster-size", "32", "--progress", "false",
            "--workers", "1", "--num-cpus", "2"]
    assert main(argv) == 0
    assert "3 fitted, 0 failed" in capsys.readouterr().out
    ids = sorted(json.loads(line)["id"] for line in (out / "manifest.jsonl").read_text().splitlines())
    assert ids == ["0", "1", "2"] and all((out / f"{i}.posed.ply").is_file() for i in ids)


def test_fit_folder_records_bad_images_and_resumes(tmp_path, capsys, flame_1000):
    flame = _setup(tmp_path, flame_1000)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "sub/c.png"):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(images / name)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    Image.new("RGB", (12, 12)).save(images / "tiny.png")
    out = tmp_path / "fits"
    argv = ["fit", "--images", str(images), "--priors", str(tmp_path / "priors.pt"), "--flame", str(flame),
            "--out", str(out), "--batch-size", "2", "--steps", "5", "--init-steps", "10", "--raster-size", "32", "--progress", "false"]
    assert main(argv) == 1  # some images failed
    text = capsys.readouterr().out
    assert "failed corrupt" in text and "failed tiny" in text and "too small" in text
    for name in ("a", "b", "sub__c"):
        params = json.loads((out / f"{name}.json").read_text())
        assert len(params["pose"]) == 15 and params["camera"]["focal_px"] > 0
        for suffix in ("posed.ply", "neutral.ply", "overlay.png", "pred_normal.png", "pred_uv.png"):
            assert (out / f"{name}.{suffix}").stat().st_size > 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 5
    assert main(argv) == 1  # the bad ones stay on the failed list, nothing is redone
    assert "5 images: 5 already fitted" in capsys.readouterr().out
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 5
    # a replaced (fixed) file is tried again; the others are still skipped
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / "tiny.png")
    assert main(argv) == 1  # corrupt.jpg is still broken
    assert "5 images: 4 already fitted, 1 fitted, 1 failed" in capsys.readouterr().out
    assert (out / "tiny.json").is_file()


def test_detect_crops_faces_and_records_faceless_images(tmp_path, capsys, flame_1000):
    import torch

    from p3dmm.fitting.fit import fixed_camera
    from p3dmm.flame.render import RayCaster, shade
    from p3dmm.flame.synth.anatomy import Anatomy
    from p3dmm.flame.synth.head import build_head

    flame = _setup(tmp_path, flame_1000)
    mesh = build_head(Anatomy(), 1000)
    cam = fixed_camera(1, 160, torch.tensor([480.0], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))
    hits = RayCaster(mesh.verts, mesh.faces).cast(cam)
    face = shade(hits, mesh.verts, mesh.faces, background=(90, 110, 140),
                 vertex_colors=np.where(mesh.eyeball[:, None] > 0, 0.92, np.array([0.82, 0.62, 0.5])))
    rng = np.random.default_rng(0)
    photo = (rng.integers(0, 256, (360, 480, 3)) * 0.5 + 64).astype(np.uint8)
    photo[120:280, 250:410] = face  # a face off-centre in a larger photo
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(photo).save(images / "person.png")
    Image.fromarray((rng.integers(0, 256, (200, 200, 3)) * 0.5 + 64).astype(np.uint8)).save(images / "noise.png")
    out = tmp_path / "fits"
    argv = ["fit", "--images", str(images), "--priors", str(tmp_path / "priors.pt"), "--flame", str(flame),
            "--out", str(out), "--batch-size", "2", "--steps", "3", "--init-steps", "10", "--raster-size", "32", "--progress", "false",
            "--detect", "true"]
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "1 fitted, 1 failed" in text and "failed noise" in text and "no face found" in text
    assert (out / "person.overlay.png").is_file() and not (out / "noise.json").exists()


def test_predicted_maps_round_trip_through_16_bit_png(tmp_path):
    from p3dmm.fitting.outputs import decode_map, encode_maps

    rng = np.random.default_rng(0)
    normal = rng.normal(size=(24, 20, 3))
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    uv = rng.uniform(size=(24, 20, 2))
    normal_png, uv_png = encode_maps(normal, uv)
    (tmp_path / "n.png").write_bytes(normal_png)
    (tmp_path / "u.png").write_bytes(uv_png)
    assert np.abs(decode_map(tmp_path / "n.png", 3, signed=True) - normal).max() < 2e-5
    assert np.abs(decode_map(tmp_path / "u.png", 2, signed=False) - uv).max() < 1e-5
    with Image.open(tmp_path / "u.png") as im:
        assert im.mode.startswith("I") and im.size == (20, 48)  # 16-bit grey, channels stacked
