"""`p3dmm run` end to end at its smallest size: every stage for real (Ray, DDP subprocess, shards, wandb
offline, fitting on a Ray actor, evaluation), the report's numbers against the stages' own outputs, and a
rerun that reuses every stage."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import yaml

from p3dmm.cli import main


def _config(tmp_path):
    return {
        "out": str(tmp_path / "run"),
        "flame": {"vertices": 1000, "seed": 3},
        "datasets": [{"source": "generic", "subjects": 2, "expressions": 1, "seed": 3},
                     {"source": "nphm", "subjects": 1, "expressions": 1, "seed": 4}],
        "register": {"fit_iterations": 24, "align_candidates": 8},
        "render": {"views": 2, "photos": 0, "size": 48, "samples_per_shard": 4, "include_rejected": True},
        "train": {"config": "configs/train-tiny.yaml", "devices": 1,
                  "args": ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--data.batch_size", "2",
                           "--model.panels_every", "2", "--model.warmup_steps", "1"]},
        "fit": {"batch_size": 4, "steps": 4, "init_steps": 10, "raster_size": 32, "limit": 3},
        "num_cpus": 2,
        "progress": False,
    }


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_pipeline_end_to_end_report_matches_outputs(tmp_path, capsys, monkeypatch):
    # started from another folder with relative paths, as a user would: every stage (the training
    # subprocess and the Ray workers too) must read and write under that folder, not the repository
    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "configs" / "train-tiny.yaml", tmp_path / "train-tiny.yaml")
    monkeypatch.chdir(tmp_path)
    config = {**_config(tmp_path), "out": "run"}
    config["train"] = {**config["train"], "config": "train-tiny.yaml"}
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", "pipeline.yaml"]) == 0
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    page = (run / "report.html").read_text()
    assert f"report: {run / 'report.html'}" in capsys.readouterr().out

    # every stage ran and finished
    assert all(report["stages"][s]["status"] == "ok" for s in ("flame", "scans", "register", "render", "train", "fit", "eval"))
    # registration counts are the manifests' own
    for label in ("generic", "nphm"):
        lines = (run / "registered" / label / "manifest.jsonl").read_text().splitlines()
        assert report["register"][label]["scans"] == len(lines)
        truth = json.loads((run / "registered" / label / "eval.json").read_text())["overall"]
        assert report["register"][label]["truth"] == truth
        assert f"{truth['median_mm']:.3f}" in page
    # shards: the index's counts
    index = json.loads((run / "shards" / "index.json").read_text())
    for split, entry in index["splits"].items():
        assert report["render"]["splits"][split]["samples"] == entry["samples"]
    # training: the wandb offline run's steps
    assert report["train"]["steps"] == 4 and (run / "train" / "priors.pt").is_file()
    # fitting and evaluation: the fit manifests and eval.json of ours and of the baseline
    for name in ("fit", "fit-baseline"):
        fitted = [json.loads(line) for line in (run / name / "manifest.jsonl").read_text().splitlines()]
        assert report["fit"][name]["images"] == len(fitted) == min(3, index["splits"]["val"]["samples"])
        summary = json.loads((run / name / "eval" / "eval.json").read_text())["summary"]
        assert report["fit"][name]["summary"] == summary
        assert f"{summary['neutral']['chamfer_l1_mm']:.3f}" in page
    # every picture of the page exists
    images = _Images()
    images.feed(page)
    assert len(images.sources) >= 6 and "missing picture" not in page
    assert all((run / src).is_file() for src in images.sources)

    # a rerun reuses every stage and leaves the outputs as they were
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and "report" not in p.name}
    assert main(["run", "--config", str(config_file)]) == 0
    log = capsys.readouterr().out
    assert len(re.findall(r"done earlier .* reused", log)) == 7
    after = {p: p.stat().st_mtime_ns for p in before}
    assert before == after

    # new fitting settings: the earlier stages are reused, fit and eval start over on their own
    config["fit"]["steps"] = 5
    config_file.write_text(yaml.safe_dump(config))
    old_fit = (run / "fit" / "manifest.jsonl").stat().st_mtime_ns
    assert main(["run", "--config", str(config_file)]) == 0
    log = capsys.readouterr().out
    assert len(re.findall(r"done earlier .* reused", log)) == 5
    assert "[fit] settings or inputs changed" in log and "[eval] running" in log
    assert (run / "fit" / "manifest.jsonl").stat().st_mtime_ns != old_fit
    assert len((run / "fit" / "manifest.jsonl").read_text().splitlines()) == report["fit"]["fit"]["images"]


def test_failed_stage_is_named_recorded_and_reported(tmp_path, capsys):
    config = _config(tmp_path)
    config["flame"] = {"path": str(tmp_path / "no-flame-here")}
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "stage flame failed" in err
    record = json.loads((tmp_path / "run" / "stages" / "flame.json").read_text())
    assert record["status"] == "failed" and record["error"]
    assert "failed" in (tmp_path / "run" / "report.html").read_text()
    assert not (tmp_path / "run" / "stages" / "scans.json").exists()  # nothing ran after it


def test_unknown_config_key_is_refused(tmp_path, capsys):
    config = _config(tmp_path)
    config["render"]["veiws"] = 3
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(config_file)]) == 2
    assert "render: unknown key(s) 'veiws'" in capsys.readouterr().err


def test_bad_settings_stop_the_run_before_any_stage(tmp_path, capsys):
    """Every section, registration's included, is typed before any work: a typo or a value of the wrong
    type names its key, and nothing (no stage record, no FLAME, no scan) is written."""
    cases = [("register", {"fit_iterationz": 3}, "register: unknown key(s) 'fit_iterationz'"),
             ("register", {"fit_iterations": "many"}, "register.fit_iterations: expected int, got 'many'"),
             ("render", {"val_fraction": 1.5}, "render: val_fraction must lie in [0, 1)"),
             ("render", {"view": {"max_yaw": 400}}, "view: ViewConfig: angles out of range"),
             ("train", {"launcher": "slurm"}, "train.launcher: 'slurm' is not one of 'local', 'torchrun'"),
             ("train", {"config": str(tmp_path / "nope.yaml")}, "train.config: "),
             ("datasets", [{"source": "nphmm"}], "datasets[0].source: 'nphmm' is not one of 'nphm'"),
             ("datasets", [{"source": "ava256", "root": str(tmp_path)}], "needs source option(s) topology")]
    for key, value, message in cases:
        config = {**_config(tmp_path), key: value}
        config_file = tmp_path / "pipeline.yaml"
        config_file.write_text(yaml.safe_dump(config))
        assert main(["run", "--config", str(config_file)]) == 2, key
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (message, err)
        assert not (tmp_path / "run").exists()
