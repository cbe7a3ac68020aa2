"""`p3dmm run`: the whole pipeline, raw scans to evaluated fits and a report, from one config file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jsonargparse.typing import PositiveInt

from p3dmm.cli import CommandError


def _spec(cls: type, value: dict | None, where: str) -> Any:
    """A config section as its dataclass; unknown keys are refused with the accepted ones named."""
    value = dict(value or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise CommandError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(sorted(names))}")
    try:
        return cls(**value)
    except TypeError as e:
        raise CommandError(f"{where}: {e}") from None


def run(*, out: Path, datasets: list[dict], flame: dict | None = None, register: dict | None = None,
        render: dict | None = None, train: dict | None = None, fit: dict | None = None, skip: list[str] | None = None,
        address: str | None = None, num_cpus: PositiveInt | None = None, progress: bool = True) -> int:
    """Run every stage (flame, scans, register, render, train, fit, eval) and write OUT/report.html.

    Finished stages are reused; a stage cut short continues where it stopped. See configs/pipeline.yaml.

    Args:
        out: the run folder (every stage's outputs, stages/*.json, report.html).
        datasets: list of {source, root (unset: synthetic scans), name, subjects, expressions, seed,
            source_options, limit}.
        flame: {path (a real FLAME folder; unset: synthetic), vertices, seed}.
        register: RegistrationConfig overrides.
        render: {views, photos, size, samples_per_shard, val_fraction}.
        train: {config, devices, launcher (local | torchrun), args, priors (use this file, skip training)}.
        fit: {split, limit, batch_size, steps, raster_size, baseline}.
        skip: stages not to run (e.g. [train] with train.priors).
        address: Ray cluster address for registration, rendering and fitting ("auto" or host:port).
        num_cpus: CPUs of the local Ray.
        progress: progress bars.
    """
    from p3dmm.pipeline.jobs.render import RenderConfig
    from p3dmm.pipeline.run.config import DatasetSpec, FitSpec, FlameSpec, PipelineConfig, TrainSpec
    from p3dmm.pipeline.run.driver import Pipeline, StageError

    if not datasets:
        raise CommandError("datasets: give at least one dataset")
    config = PipelineConfig(
        out=str(out), flame=_spec(FlameSpec, flame, "flame"),
        datasets=[_spec(DatasetSpec, d, f"datasets[{i}]") for i, d in enumerate(datasets)],
        register=dict(register or {}), render=_spec(RenderConfig, render, "render"),
        train=_spec(TrainSpec, train, "train"), fit=_spec(FitSpec, fit, "fit"), address=address,
        num_cpus=num_cpus, progress=progress)
    try:
        Pipeline(config, skip=tuple(skip or ())).run()
    except (StageError, ValueError, FileNotFoundError) as e:
        raise CommandError(str(e)) from None
    return 0
