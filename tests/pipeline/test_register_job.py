"""`p3dmm register` end to end with real Ray: good scans registered, bad ones recorded with reasons,
reruns skip finished scans, evaluation against the synthetic ground truth, and a two-node Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from p3dmm.cli import main
from p3dmm.flame.files import load_assets
from p3dmm.flame.synth import write_synthetic_flame
from p3dmm.pipeline.datasets import write_synthetic

FAST = json.dumps({"fit_iterations": 24, "align_candidates": 8})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("register")
    flame = root / "flame"
    write_synthetic_flame(flame, n_vertices=1000, seed=2)
    data = root / "generic"
    write_synthetic("generic", data, load_assets(flame), subjects=2, expressions=1, seed=3)
    return flame, data


def _bad_inputs(data: Path) -> None:
    good = trimesh.load(next(data.glob("*.ply")), process=False)
    (data / "empty.ply").write_bytes(b"")
    nan = good.copy()
    nan.vertices[5] = np.nan
    nan.export(data / "nan.ply")
    mm = good.copy()
    mm.vertices *= 1000.0  # millimetres in a metres folder
    mm.export(data / "wrong_units.ply")
    (data / "corrupt.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 100\nend_header\n\x00")


def test_register_records_failures_and_resumes(dataset, tmp_path, capsys):
    flame, clean = dataset
    data = tmp_path / "generic"
    shutil.copytree(clean, data)
    _bad_inputs(data)
    out = tmp_path / "out"
    argv = ["register", "--source", "generic", "--root", str(data), "--flame", str(flame), "--out", str(out),
            "--num-cpus", "2", "--progress", "false", "--registration", FAST]
    assert main(argv) == 1  # some scans failed: non-zero exit with the list
    text = capsys.readouterr().out
    entries = {json.loads(line)["id"]: json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()}
    assert entries["generic/empty"]["status"] == "failed" and "empty.ply" in entries["generic/empty"]["reason"]
    assert "NaN" in entries["generic/nan"]["reason"]
    assert "units" in entries["generic/wrong_units"]["reason"]
    assert entries["generic/corrupt"]["status"] == "failed"
    good = [k for k in entries if k.startswith("generic/head")]
    assert len(good) == 2 and all(entries[k]["status"] in ("ok", "rejected") for k in good), entries
    assert "failed generic/empty" in text
    for k in good:
        assert (out / entries[k]["output"]).exists()

    assert main(["register", "eval", "--out", str(out), "--truth", str(data)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["overall"]["scans"] == 2
    assert result["overall"]["accepted"] >= 1 and result["overall"]["median_mm"] < 3.0

    # QA page: one picture per registered scan, the failed scans listed with their reasons
    assert main(["register", "report", "--out", str(out), "--size", "96", "--progress", "false"]) == 0
    page = (out / "report" / "index.html").read_text()
    for k in good:
        assert k in page
        assert (out / "report" / "scans" / f"{k.replace('/', '__')}.png").stat().st_size > 1000
    assert "generic/empty" in page and "empty.ply" in page
    assert (out / "report" / "errors.png").stat().st_size > 1000

    lines_before = len((out / "manifest.jsonl").read_text().splitlines())
    assert main(argv) == 1
    assert "already finished" in capsys.readouterr().out
    assert len((out / "manifest.jsonl").read_text().splitlines()) == lines_before  # nothing redone


def test_two_node_ray_cluster_runs_the_job(dataset, tmp_path):
    """Two Ray nodes on one machine (head + worker, each its own raylet and 1 CPU), and the CLI
    driver in another process joining with --address, as on a real cluster.

    `ray.cluster_utils.Cluster` starts the same processes as `ray start --head` / `ray start --address`;
    in this sandbox the `ray start` CLI advertises a network interface that cannot be reached.
    """
    from ray.cluster_utils import Cluster

    flame, data = dataset
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "cluster_out"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        proc = subprocess.run(
            [sys.executable, "-m", "p3dmm", "register", "--source", "generic", "--root", str(data), "--flame",
             str(flame), "--out", str(out), "--address", cluster.address, "--progress", "false",
             "--registration", FAST, "--limit", "2"],
            capture_output=True, text=True, env=env, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        ids = [json.loads(line)["id"] for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert len(ids) == 2 and len(set(ids)) == 2
    finally:
        cluster.shutdown()


def test_settings_typo_stops_before_any_scan(dataset, tmp_path, capsys):
    """A typo in --registration is our settings, not bad data: the command stops at once with the key
    named, writes nothing, and the corrected rerun into the same folder registers every scan."""
    flame, data = dataset
    out = tmp_path / "out"
    argv = ["register", "--source", "generic", "--root", str(data), "--flame", str(flame), "--out", str(out),
            "--num-cpus", "2", "--progress", "false", "--registration"]
    assert main([*argv, json.dumps({"fit_iterationz": 3})]) == 2
    err = capsys.readouterr().err
    assert "--registration: unknown key(s) 'fit_iterationz'" in err and "fit_iterations" in err
    assert err.count("\n") == 1 and not out.exists()
    assert main([*argv, json.dumps({"align_candidates": "eight"})]) == 2
    assert "--registration.align_candidates: expected int, got 'eight'" in capsys.readouterr().err
    assert main([*argv, FAST, "--limit", "1"]) == 0
    assert "0 already finished, 1 run" in capsys.readouterr().out


def test_missing_reader_option_is_named_before_any_work(dataset, tmp_path, capsys):
    flame, data = dataset
    assert main(["register", "--source", "ava256", "--root", str(data), "--flame", str(flame),
                 "--out", str(tmp_path / "out")]) == 2
    assert "dataset ava256 needs source option(s) topology" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- starts: the dataset's FLAME fit, detected landmarks -------------------------------------------


@pytest.fixture(scope="module")
def nphm_dataset(dataset, tmp_path_factory):
    """One synthetic NPHM scan: textured, no landmark files, a rough flame.ply beside it."""
    flame, _ = dataset
    data = tmp_path_factory.mktemp("register_nphm") / "nphm"
    write_synthetic("nphm", data, load_assets(flame), subjects=1, expressions=1, seed=4)
    return flame, data


def test_registration_job_with_dataset_init_and_detected_landmarks(nphm_dataset, tmp_path):
    """registration_job -> one task (no Ray): the config's init reaches the task, landmarks are detected for a
    reader that gives none, and the result says so."""
    from p3dmm.pipeline.datasets import reader
    from p3dmm.pipeline.jobs.register import register_one, registration_job
    from p3dmm.pipeline.registered import load_registered
    from p3dmm.registration.config import RegistrationConfig

    flame, data = nphm_dataset
    config = RegistrationConfig(init="dataset", **json.loads(FAST))
    job = registration_job("nphm", data, tmp_path / "out", flame, registration=config, landmarks="detect")
    assert job.registration.init == "dataset" and job.landmarks == "detect"
    record = next(reader("nphm").iter_records(job.root))
    result = register_one((record, job))
    assert result["status"] in ("ok", "rejected"), result
    assert "points detected" in result["landmarks"]
    registered = load_registered(Path(job.out_dir) / result["output"])
    assert registered.vertices.shape == (load_assets(flame).model.num_vertices, 3)
    with pytest.raises(ValueError, match="landmarks must be one of dataset, detect, detect-always"):
        registration_job("nphm", data, tmp_path / "out", flame, landmarks="detected")


def test_init_and_landmarks_options_reach_the_job(nphm_dataset, tmp_path, capsys):
    flame, data = nphm_dataset
    out = tmp_path / "out"
    argv = ["register", "--source", "nphm", "--root", str(data), "--flame", str(flame), "--out", str(out),
            "--num-cpus", "1", "--progress", "false", "--registration"]
    assert main([*argv, json.dumps({"init": "dataset"}), "--init", "template"]) == 2
    assert "--init template contradicts --registration's init 'dataset'" in capsys.readouterr().err
    assert not out.exists()
    assert main([*argv, FAST, "--init", "dataset", "--landmarks", "detect"]) == 0
    job = json.loads((out / "job.json").read_text())
    assert job["registration"]["init"] == "dataset" and job["landmarks"] == "detect"
    (entry,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert entry["status"] in ("ok", "rejected") and "points detected" in entry["landmarks"]
