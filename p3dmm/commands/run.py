"""`p3dmm run`: the whole pipeline, raw scans to evaluated fits and a report, from one config file."""

from __future__ import annotations

from pathlib import Path

from jsonargparse.typing import PositiveInt

from p3dmm.commands import CommandError


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
    from p3dmm.flame.settings import SettingsError, build_settings
    from p3dmm.pipeline.run.config import PipelineConfig
    from p3dmm.pipeline.run.driver import Pipeline, StageError

    if not datasets:
        raise CommandError("datasets: give at least one dataset")
    sections = {"out": str(out), "flame": flame, "datasets": datasets, "register": register, "render": render,
                "train": train, "fit": fit, "address": address, "num_cpus": num_cpus, "progress": progress}
    try:  # every section typed and checked before any stage runs
        config = build_settings(PipelineConfig, sections, "")
    except SettingsError as e:
        raise CommandError(str(e)) from None
    try:
        Pipeline(config, skip=tuple(skip or ())).run()
    except (StageError, ValueError, FileNotFoundError) as e:
        raise CommandError(str(e)) from None
    return 0
