"""`p3dmm run`: every stage from raw scans to evaluated fits, each resumable and skippable.

Thin orchestration over the stage commands (the same functions `p3dmm register`, `p3dmm render`, ...
run): FLAME -> scans (synthetic layouts only) -> registration (Ray) -> shards (Ray) -> training (DDP, a
subprocess, optionally through infra/'s torchrun launcher) -> fitting of held-out views (Ray when an
address is given) with the mean-shape baseline -> evaluation -> report.html.

Every stage writes `OUT/stages/<stage>.json` when it finishes: a digest of its settings and of the stages
before it, seconds and status. A rerun skips a stage whose record says ok with the same digest; a stage cut
short reruns and its command's own resume (manifests, shard plans, checkpoints) continues where it stopped;
a stage whose settings or upstream results changed starts over (its outputs in the run folder are removed
first), and so does every stage after it.
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
from p3dmm.pipeline.run.config import STAGES, PipelineConfig, RunLayout

REPO = Path(__file__).resolve().parents[2]


class StageError(RuntimeError):
    """A stage that could not produce its outputs; the message names the stage and the reason."""


def synthetic_source_options(source: str, root: Path) -> dict[str, str]:
    """Adapter options the synthetic layouts need (files written next to the scans, as in the real data)."""
    return {"facescape": {"landmark_indices": str(root / "landmark_indices.npz")},
            "facescape-mview": {"rt_scale_dict": str(root / "Rt_scale_dict.json")},
            "ava256": {"topology": str(root / "assets" / "face_topology.obj")}}.get(source, {})


class Pipeline(RunLayout):
    """Runs the stages of a PipelineConfig in order, skipping finished ones."""

    def __init__(self, config: PipelineConfig, skip: tuple[str, ...] = (), log: Callable[[str], None] = print):
        unknown = set(skip) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) to skip: {sorted(unknown)} (stages: {', '.join(STAGES)})")
        super().__init__(config)
        self.skip, self.log = set(skip), log
        self._ray_started = False

    def _ensure_ray(self) -> None:
        """One Ray session for every Ray stage of the run (each command would otherwise start its own)."""
        from p3dmm.pipeline.jobs.runner import init_ray

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
        return {"flame": asdict(c.flame), "scans": [asdict(d) for d in c.datasets], "register": c.register,
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

    def _command(self, rc: int, what: str, ok: tuple[int, ...] = (0,)) -> int:
        if rc not in ok:
            raise StageError(f"{what} exited with status {rc}")
        return rc

    # -- the stages ----------------------------------------------------------------------------------------
    def stage_flame(self) -> dict:
        from p3dmm.commands import flame

        c = self.config.flame
        if c.path:
            self._command(flame.check(flame=Path(c.path)), f"p3dmm flame check --flame {c.path}")
            return {"model": c.path}
        self._command(flame.synth(out=self.flame_dir, vertices=c.vertices, seed=c.seed), "p3dmm flame synth")
        self._command(flame.preview(out=self.out / "flame_preview.png", flame=self.flame_dir), "p3dmm flame preview")
        return {"model": "synthetic", "vertices": c.vertices}

    def stage_scans(self) -> dict:
        from p3dmm.commands.register import synth_scans

        written = {}
        for ds in self.config.datasets:
            if ds.root:
                if not Path(ds.root).is_dir():
                    raise StageError(f"dataset {ds.label}: root {ds.root} not found")
                continue
            root = self.scans_dir(ds)
            self._command(synth_scans(layout=ds.source, out=root, flame=self.flame_dir, subjects=ds.subjects,
                                      expressions=ds.expressions, seed=ds.seed), f"p3dmm synth scans {ds.label}")
            written[ds.label] = ds.subjects * ds.expressions
        return {"synthetic_scans": written}

    def stage_register(self) -> dict:
        self._ensure_ray()
        from p3dmm.commands import register

        c = self.config
        failures = {}
        for ds in c.datasets:
            root, out = self.scans_dir(ds), self.registered_dir(ds)
            options = {**(synthetic_source_options(ds.source, root) if not ds.root else {}), **ds.source_options}
            rc = register.run(source=ds.source, root=root, out=out, flame=self.flame_dir, address=c.address,
                              num_cpus=c.num_cpus, limit=ds.limit, source_options=options, registration=c.register,
                              progress=c.progress)
            failures[ds.label] = rc  # 1: some scans failed (recorded in the manifest); the rest go on
            if (root / "_truth").is_dir():
                self._command(register.evaluate(out=out, truth=root), f"p3dmm register eval {ds.label}")
            self._command(register.report(out=out, progress=False), f"p3dmm register report {ds.label}")
        return {"datasets_with_failures": [k for k, rc in failures.items() if rc]}

    def stage_render(self) -> dict:
        self._ensure_ray()
        from p3dmm.commands import render

        c, r = self.config, self.config.render
        shards = self.out / "shards"
        rc = render.run(registered=[self.registered_dir(ds) for ds in c.datasets], out=shards, **asdict(r),
                        address=c.address, num_cpus=c.num_cpus, progress=c.progress)
        self._command(rc, "p3dmm render", ok=(0, 1))
        self._command(render.verify(shards=shards), "p3dmm shards verify")
        self._command(render.preview(shards=shards, out=self.out / "shards_preview.png", n=6),
                      "p3dmm shards preview")
        return {}

    def stage_train(self) -> dict:
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
            command = ["bash", str(REPO / "infra" / "train" / "torchrun-train.sh"), *overrides]
            env["NPROC"] = str(t.devices)
        elif t.launcher == "local":
            command = [sys.executable, "-m", "p3dmm", "train", "fit", *overrides[:2], "--trainer.devices", str(t.devices),
                       *overrides[2:]]  # after --config, so the file does not override it
        else:
            raise StageError(f"train.launcher must be local or torchrun, got {t.launcher!r}")
        self.log("  " + " ".join(command))
        done = subprocess.run(command, env=env, cwd=REPO)
        self._command(done.returncode, "training")
        from p3dmm.commands.train import export

        self._command(export(ckpt=root / "checkpoints" / "last.ckpt", out=self.priors), "p3dmm train export")
        return {"devices": t.devices, "launcher": t.launcher}

    def stage_fit(self) -> dict:
        self._ensure_ray()
        from p3dmm.commands import fit

        c, f = self.config, self.config.fit
        # ours from the shards (exports the held-out views and their truth), the baseline from that export
        sources = {"fit": {"shards": self.out / "shards", "split": f.split, "limit": f.limit}}
        if f.baseline:
            sources["fit-baseline"] = {"images": self.fit_inputs / "images"}
        for name, source in sources.items():
            rc = fit.run(priors=self.priors, out=self.out / name, **source, flame=self.flame_dir,
                         batch_size=f.batch_size, steps=f.steps, init_steps=f.init_steps, raster_size=f.raster_size,
                         shape=name == "fit", address=c.address, num_cpus=c.num_cpus,
                         workers=None if c.address else 1, progress=c.progress)  # Ray actors (a local Ray here)
            self._command(rc, f"p3dmm fit ({name})", ok=(0, 1))
        return {}

    def stage_eval(self) -> dict:
        from p3dmm.commands import evaluate

        for name in ("fit", "fit-baseline") if self.config.fit.baseline else ("fit",):
            self._command(evaluate.run(pred=self.out / name, gt=self.fit_inputs / "gt", flame=self.flame_dir),
                          f"p3dmm eval {name}")
        return {}
