"""`p3dmm render` end to end with real Ray and real registrations: shards, index, splits, verify, preview,
round trip through plain webdataset and tar, truncated shards, crashes mid-shard, reruns."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import warnings

import numpy as np
import pytest

from p3dmm.cli import main
from p3dmm.flame.synth import write_synthetic_flame
from p3dmm.pipeline.jobs.render import split_subjects
from p3dmm.pipeline.shards.format import FOREGROUND, decode_sample, encode_flags, encode_sample
from p3dmm.pipeline.shards.reader import iter_samples, shard_paths
from p3dmm.pipeline.shards.writer import write_shard

FAST = json.dumps({"fit_iterations": 24, "align_candidates": 8})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two generic subjects (rendered views) and one Ava256 frame (rendered + photo views), registered
    for real, rendered at 48 px into shards of 3 samples."""
    from p3dmm.flame.files import load_assets
    from p3dmm.pipeline.datasets import write_synthetic
    from p3dmm.pipeline.synth.ava256 import write_ava256

    root = tmp_path_factory.mktemp("shards")
    flame = root / "flame"
    write_synthetic_flame(flame, n_vertices=1000, seed=2)
    assets = load_assets(flame)
    write_synthetic("generic", root / "generic", assets, subjects=2, expressions=1, seed=3)
    write_ava256(root / "ava256", assets, subjects=["AAA111"], frames=1, seed=2, cameras=3, image_downscale=8)
    for source, options in (("generic", {}),
                            ("ava256", {"topology": str(root / "ava256" / "assets" / "face_topology.obj")})):
        argv = ["register", "--source", source, "--root", str(root / source), "--flame", str(flame),
                "--out", str(root / "reg" / source), "--num-cpus", "2", "--progress", "false",
                "--registration", FAST, "--source_options", json.dumps(options)]
        assert main(argv) == 0
    out = root / "out"
    argv = ["render", "--registered", str(root / "reg" / "generic"), str(root / "reg" / "ava256"), "--out", str(out),
            "--views", "2", "--photos", "2", "--size", "48", "--samples_per_shard", "3", "--num-cpus", "2",
            "--progress", "false", "--include_rejected", "true"]  # quick registrations may be rejected
    assert main(argv) == 0
    return root, out, argv


def test_index_splits_and_verify(shards, capsys):
    _, out, _ = shards
    index = json.loads((out / "index.json").read_text())
    assert index["complete"]
    total = sum(e["samples"] for e in index["shards"].values())
    # 3 scans x 2 rendered views + up to 2 photo views of the Ava256 frame (cameras that see the face);
    # a photo view without a usable camera is listed as skipped in the manifest
    skipped = [k for line in (out / "manifest.jsonl").read_text().splitlines() for k in json.loads(line)["skipped"]]
    photos = total - 3 * 2
    assert 1 <= photos <= 2 and len(skipped) == 2 - photos
    for name, entry in index["shards"].items():
        assert (out / name).stat().st_size == entry["bytes"] and entry["samples"] <= 3
    train, val = (set(index["splits"][s]["subjects"]) for s in ("train", "val"))
    assert train and val and not train & val
    assert main(["shards", "verify", str(out)]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    # every sample sits in a shard of its own split, and its subject belongs to that split
    for name, entry in index["shards"].items():
        for sample in iter_samples([str(out / name)]):
            assert sample.meta["split"] == entry["split"]
            assert sample.meta["subject"] in (train if entry["split"] == "train" else val)


def test_samples_are_consistent_and_photos_line_up(shards):
    _, out, _ = shards
    samples = list(iter_samples(shard_paths(out)))
    kinds = {s.meta["kind"] for s in samples}
    assert kinds == {"render", "photo"}
    for s in samples:
        fg = (s.flags & FOREGROUND) > 0
        assert 0.05 < fg.mean() < 0.95, s.key  # the head is in the crop, not filling it
        assert s.face_mask.sum() > 20
        assert np.all(np.abs(np.linalg.norm(s.normal[fg], axis=-1) - 1) < 0.02)
        assert (s.uv[s.face_mask] >= 0).all() and (s.uv[s.face_mask] <= 1).all()
        assert set(s.meta["camera"]) == {"K", "R", "t", "size"} and len(s.meta["flame"]["pose"]) == 15
    # photo views: the synthetic photos have a flat background colour; the head (FLAME foreground)
    # must land on non-background pixels, i.e. the photo crop and the targets line up.
    from p3dmm.pipeline.synth.ava256 import BACKGROUND

    for s in (s for s in samples if s.meta["kind"] == "photo"):
        head = np.abs(s.rgb.astype(int) - np.array(BACKGROUND)).sum(-1) > 40
        face = s.face_mask
        assert (head[face]).mean() > 0.9, s.key


def test_round_trip_plain_webdataset_and_tar(shards, tmp_path):
    import webdataset as wds

    _, out, _ = shards
    path = shard_paths(out)[0]
    members = next(iter(wds.WebDataset(path, shardshuffle=False)))
    key = members["__key__"]
    subprocess.run(["tar", "-xf", path, "-C", str(tmp_path)], check=True)
    for name in ("rgb.jpg", "normal.png", "uv.png", "mask.png", "depth.png", "meta.json"):
        assert (tmp_path / f"{key}.{name}").read_bytes() == members[name]
    # encode(decode(x)) == x bit for bit: nothing is lost or re-quantised on the way
    s = decode_sample(members)
    again = encode_sample(key, s.rgb, s.normal, s.uv, s.flags, np.where(s.depth > 0, s.depth, np.inf), s.meta)
    for name in ("normal.png", "uv.png", "mask.png", "depth.png", "meta.json"):
        a, b = decode_sample(members), decode_sample({**members, name: again[name]})
        for field in ("normal", "uv", "flags", "depth"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), (name, field)
    assert again["meta.json"] == members["meta.json"]


def test_rerun_skips_and_is_deterministic(shards, tmp_path, capsys):
    _, out, argv = shards
    before = json.loads((out / "index.json").read_text())
    assert main(argv) == 0
    assert "already finished" in capsys.readouterr().out
    assert json.loads((out / "index.json").read_text())["shards"] == before["shards"]
    # the same registrations and config render byte-identical shards in a fresh folder
    fresh = tmp_path / "fresh"
    argv2 = [a if a != str(out) else str(fresh) for a in argv]
    assert main(argv2) == 0
    again = json.loads((fresh / "index.json").read_text())
    assert {k: v["sha256"] for k, v in again["shards"].items()} == {k: v["sha256"] for k, v in before["shards"].items()}
    # a changed config is refused rather than mixed into the old shards
    argv3 = [*argv2[:-2], "--views", "3", *argv2[-2:]]
    assert main(argv3) == 2
    assert "changed since these shards were planned" in capsys.readouterr().err


def test_truncated_shard_is_named_and_skipped(shards, tmp_path, capsys):
    _, out, _ = shards
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    names = sorted(json.loads((bad / "index.json").read_text())["shards"])
    victim = bad / names[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    assert main(["shards", "verify", str(bad)]) == 1
    text = capsys.readouterr().out
    assert f"BAD {victim}" in text and "truncated" in text
    good_count = sum(e["samples"] for n, e in json.loads((bad / "index.json").read_text())["shards"].items()
                     if n != names[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = list(iter_samples(shard_paths(bad)))
    assert any(names[0] in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert good_count <= len(samples) < good_count + 3


def test_crash_mid_shard_leaves_nothing(tmp_path):
    rng = np.random.default_rng(0)
    flags = encode_flags(np.ones((8, 8), bool), np.ones((8, 8), bool))
    sample = encode_sample("a", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), np.tile([0, 0, 1.0], (8, 8, 1)),
                           rng.random((8, 8, 2)), flags, np.full((8, 8), 0.5), {"x": 1})

    def samples():
        yield "k0", sample
        yield "k1", sample
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        write_shard(tmp_path / "train-000000.tar", samples())
    assert list(tmp_path.iterdir()) == []
    entry = write_shard(tmp_path / "ok.tar", iter([("k0", sample)]))
    assert entry["samples"] == 1 and entry["bytes"] == (tmp_path / "ok.tar").stat().st_size
    with tarfile.open(tmp_path / "ok.tar") as tar:
        assert sorted(m.name for m in tar) == sorted(f"k0.{n}" for n in sample)
        assert tar.extractfile("k0.meta.json").read() == sample["meta.json"]


def test_split_by_subject_is_stable_and_disjoint():
    subjects = [f"nphm/{i:03d}" for i in range(40)]
    split = split_subjects(subjects, 0.2, seed=0)
    assert 3 <= sum(v == "val" for v in split.values()) <= 15
    more = split_subjects([*subjects, *[f"ava256/{i}" for i in range(20)]], 0.2, seed=0)
    assert all(more[s] == split[s] for s in subjects)  # adding data never moves a subject
    assert set(split_subjects(["a", "b"], 0.1, seed=0).values()) == {"train", "val"}
