"""`p3dmm run`: every stage from raw scans to evaluated fits, each resumable and skippable.

The driver calls each stage's library function (the same ones `p3dmm register`, `p3dmm render`, ... call)
and records the summaries they return: FLAME -> scans (synthetic layouts only) -> registration (Ray) ->
shards (Ray) -> training (DDP, a subprocess, optionally through infra/'s torchrun launcher) -> fitting of
held-out views (Ray actors) with the mean-shape baseline -> evaluation -> report.html. Every path is made
absolute before a subprocess or a Ray task sees it, so a run started from any folder reads and writes
where its config says.

Every stage writes `OUT/stages/<stage>.json` when it finishes: a digest of its settings and of the stages
before it, seconds, status and the stage's summary. A rerun skips a stage whose record says ok with the
same digest; a stage cut short reruns and its job's own resume (manifests, shard plans, checkpoints)
continues where it stopped; a stage whose settings or upstream results changed starts over (its outputs
in the run folder are removed first), and so does every stage after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from p3dmm.flame.atomic import atomic_write
from p3dmm.pipeline.datasets import reader_options
from p3dmm.pipeline.jobs.runner import JobSummary, init_ray
from p3dmm.pipeline.run.config import STAGES, PipelineConfig, RunLayout, resolve_paths

LAUNCHER = Path(__file__).resolve().parents[2] / "infra" / "train" / "torchrun-train.sh"
"""The torchrun launcher of a source checkout (`train.launcher: torchrun`); an installed wheel has none."""


class StageError(RuntimeError):
    """A stage that could not produce its outputs; the message names the stage and the reason."""


def job_record(summary: JobSummary) -> dict:
    """A Ray job's summary as a stage record holds it."""
    return {"items": summary.total, "reused": summary.skipped, "counts": summary.counts,
            "failed": [list(f) for f in summary.failed]}


class Pipeline(RunLayout):
    """Runs the stages of a PipelineConfig in order, skipping finished ones."""

    def __init__(self, config: PipelineConfig, skip: tuple[str, ...] = (), log: Callable[[str], None] = print):
        unknown = set(skip) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) to skip: {sorted(unknown)} (stages: {', '.join(STAGES)})")
        super().__init__(resolve_paths(config))
        self.skip, self.log = set(skip), log
        self._ray_started = False
        self._check()

    def _check(self) -> None:
        """What can be known wrong before any stage runs: missing inputs, reader options, the launcher."""
        c = self.config
        for ds in c.datasets:
            reader_options(ds.source, ds.source_options, None if ds.root else self.scans_dir(ds))
        if "train" not in self.skip and not c.train.priors:
            if not Path(c.train.config).is_file():
                raise ValueError(f"train.config: {c.train.config} not found")
            if c.train.launcher == "torchrun" and not LAUNCHER.is_file():
                raise ValueError(f"train.launcher torchrun needs {LAUNCHER} (a source checkout of p3dmm)")

    def _ensure_ray(self) -> None:
        """One Ray session for every Ray stage of the run (each job would otherwise start its own)."""
        self._ray_started |= init_ray(self.config.address, self.config.num_cpus)

    # -- running -----------------------------------------------------------------------------------------
    def run(self) -> Path:
        from p3dmm.pipeline.run.report import write_report

        self.records.mkdir(parents=True, exist_ok=True)
        upstream = ""
        try:
            for stage in STAGES:
                upstream = self._run_stage(stage, getattr(self, f"stage_{stage}"), upstream)
        except StageError:
            self.log(f"report (up to the failed stage): {write_report(self)}")
            raise
        finally:
            if self._ray_started:
                import ray

                ray.shutdown()
        page = write_report(self)
        self.log(f"report: {page}")
        return page

    def settings(self, stage: str) -> dict:
        c = self.config
        # a stage's own section only: what it reads from earlier stages is in the chained digest
        return {"flame": asdict(c.flame), "scans": [asdict(d) for d in c.datasets], "register": asdict(c.register),
                "render": asdict(c.render), "train": asdict(c.train), "fit": asdict(c.fit), "eval": {}}[stage]

    def _run_stage(self, stage: str, body: Callable[[], dict], upstream: str) -> str:
        """Run one stage unless its record says it finished with these settings and these upstream results.
        Returns the stage's digest, which the next stage's digest includes: a stage that reran (new
        settings, new inputs) makes every later stage run again on its new outputs."""
        settings = self.settings(stage)
        digest = hashlib.sha256(json.dumps([settings, upstream], sort_keys=True).encode()).hexdigest()[:16]
        previous = self.record(stage)
        if stage in self.skip:
            self.log(f"[{stage}] skipped (--skip)")
            return previous.get("settings_hash", "") if previous else ""
        if previous and previous.get("status") == "ok" and previous.get("settings_hash") == digest:
            self.log(f"[{stage}] done earlier ({previous['seconds']:.1f} s), reused")
            return digest
        if previous and previous.get("settings_hash") != digest:
            stale = [p for p in self.outputs(stage) if p.exists()]
            if stale:  # made with other settings or from other inputs: resuming them would mix the two
                self.log(f"[{stage}] settings or inputs changed since the last run: removing "
                         + ", ".join(str(p) for p in stale))
                for path in stale:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.log(f"[{stage}] running")
        start = time.perf_counter()
        try:
            details = body()
        except Exception as e:
            seconds = time.perf_counter() - start
            self._write_record(stage, {"status": "failed", "error": f"{type(e).__name__}: {e}", "seconds": seconds,
                                       "settings_hash": digest})
            raise StageError(f"stage {stage} failed after {seconds:.1f} s: {e}") from e
        seconds = time.perf_counter() - start
        self._write_record(stage, {"status": "ok", "seconds": seconds, "settings_hash": digest,
                                   "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **(details or {})})
        self.log(f"[{stage}] finished in {seconds:.1f} s")
        return digest

    def _write_record(self, stage: str, record: dict) -> None:
        atomic_write(self.records / f"{stage}.json", (json.dumps(record, indent=1) + "\n").encode())

    # -- the stages ----------------------------------------------------------------------------------------
    def _assets(self):
        from p3dmm.flame.files import load_assets

        return load_assets(self.flame_dir)

    def stage_flame(self) -> dict:
        from p3dmm.flame.preview import write_preview
        from p3dmm.flame.synth import write_synthetic_flame

        c = self.config.flame
        if c.path:
            model = self._assets().model  # a FlameFileError names the file and the problem
            return {"model": c.path, "vertices": int(model.num_vertices)}
        result = write_synthetic_flame(self.flame_dir, n_vertices=c.vertices, seed=c.seed)
        write_preview(result.assets, self.out / "flame_preview.png", folder=self.flame_dir)
        return {"model": "synthetic", "vertices": int(result.assets.model.num_vertices)}

    def stage_scans(self) -> dict:
        from p3dmm.pipeline.datasets import write_synthetic

        written, assets = {}, None
        for ds in self.config.datasets:
            if ds.root:
                if not Path(ds.root).is_dir():
                    raise StageError(f"dataset {ds.label}: root {ds.root} not found")
                continue
            assets = assets or self._assets()  # the FLAME folder is read once for every synthetic dataset
            ids = write_synthetic(ds.source, self.scans_dir(ds), assets, subjects=ds.subjects,
                                  expressions=ds.expressions, seed=ds.seed)
            written[ds.label] = len(ids)
        return {"synthetic_scans": written}

    def stage_register(self) -> dict:
        from p3dmm.pipeline.jobs.register import registration_job, run_registration
        from p3dmm.pipeline.report.registration import write_register_report
        from p3dmm.pipeline.report.registration_eval import evaluate_registrations

        self._ensure_ray()
        c, jobs = self.config, {}
        for ds in c.datasets:
            root, out = self.scans_dir(ds), self.registered_dir(ds)
            options = reader_options(ds.source, ds.source_options, None if ds.root else root)
            job = registration_job(ds.source, root, out, self.flame_dir, source_options=options,
                                   registration=c.register)
            summary = run_registration(job, address=c.address, num_cpus=c.num_cpus, limit=ds.limit,
                                       progress=c.progress)  # failed scans are recorded; the rest go on
            jobs[ds.label] = job_record(summary)
            for line in summary.lines():
                self.log(f"  {ds.label}: {line}")
            if (root / "_truth").is_dir():
                jobs[ds.label]["truth"] = evaluate_registrations(out, root)["overall"]
            write_register_report(out, progress=False)
        return {"datasets": jobs, "datasets_with_failures": [k for k, j in jobs.items() if j["failed"]]}

    def stage_render(self) -> dict:
        from p3dmm.pipeline.jobs.render import run_render
        from p3dmm.pipeline.shards.preview import write_preview
        from p3dmm.pipeline.shards.reader import verify_shards

        self._ensure_ray()
        c, shards = self.config, self.out / "shards"
        summary, index = run_render([self.registered_dir(ds) for ds in c.datasets], shards, c.render,
                                    address=c.address, num_cpus=c.num_cpus, progress=c.progress)
        n_shards, n_samples, problems = verify_shards(shards)
        if problems:
            raise StageError(f"{len(problems)} shard problem(s), first: {problems[0]}")
        write_preview(shards, self.out / "shards_preview.png", n=6)
        splits = {part: {"shards": s["shards"], "samples": s["samples"], "subjects": len(s["subjects"])}
                  for part, s in index["splits"].items()}
        return {**job_record(summary), "shards": n_shards, "samples": n_samples, "splits": splits}

    def stage_train(self) -> dict:
        from p3dmm.training.export import export_priors

        t = self.config.train
        if t.priors:
            if not Path(t.priors).is_file():
                raise StageError(f"train.priors {t.priors} not found")
            return {"priors": t.priors}
        root = self.out / "train"
        overrides = ["--config", t.config, "--data.shards", str(self.out / "shards"),
                     "--trainer.default_root_dir", str(root), *t.args]
        if (root / "checkpoints" / "last.ckpt").is_file():
            overrides += ["--ckpt_path", "last"]  # a stage cut short continues from its last checkpoint
        env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "HF_HUB_OFFLINE": "1"}
        if t.launcher == "torchrun":
            command = ["bash", str(LAUNCHER), *overrides]
            env["NPROC"] = str(t.devices)
        else:  # after --config, so the file does not override it
            command = [sys.executable, "-m", "p3dmm", "train", "fit", *overrides[:2], "--trainer.devices",
                       str(t.devices), *overrides[2:]]
        self.log("  " + " ".join(command))
        done = subprocess.run(command, env=env)  # the caller's working folder: every path above is absolute
        if done.returncode != 0:
            raise StageError(f"training exited with status {done.returncode}")
        meta = export_priors(root / "checkpoints" / "last.ckpt", self.priors)
        return {"devices": t.devices, "launcher": t.launcher, "step": meta["step"]}

    def stage_fit(self) -> dict:
        from p3dmm.fitting.fit import FitConfig
        from p3dmm.pipeline.jobs.fit import fit_images, fit_shards

        self._ensure_ray()
        c, f = self.config, self.config.fit
        fits = {}
        for name in ("fit", "fit-baseline") if f.baseline else ("fit",):
            # ours from the shards (exports the held-out views and their truth), the baseline from that export
            options = {"batch_size": f.batch_size, "address": c.address, "num_cpus": c.num_cpus,
                       "workers": None if c.address else 1, "progress": c.progress,  # Ray actors (a local Ray here)
                       "config": FitConfig(steps=f.steps, init_steps=f.init_steps, raster_size=f.raster_size,
                                           fit_shape=name == "fit")}
            if name == "fit":
                summary = fit_shards(self.out / "shards", f.split, self.priors, self.flame_dir, self.out / name,
                                     limit=f.limit, **options)
            else:
                summary = fit_images(self.fit_inputs / "images", self.priors, self.flame_dir, self.out / name,
                                     **options)
            fits[name] = {"images": summary.total, "fitted": summary.fitted,
                          "failed": [list(x) for x in summary.failed]}
        return {"fits": fits}

    def stage_eval(self) -> dict:
        from p3dmm.fitting.evaluate import evaluate_dir, write_report

        summaries = {}
        for name in ("fit", "fit-baseline") if self.config.fit.baseline else ("fit",):
            out = self.out / name / "eval"
            result = evaluate_dir(self.out / name, self.fit_inputs / "gt", self.flame_dir, out=out)
            write_report(result, out, self.out / name)
            summaries[name] = result["summary"]
        return {"summary": summaries}
