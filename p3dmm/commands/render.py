"""`p3dmm render [run]`, `p3dmm shards verify`, `p3dmm shards preview`."""

from __future__ import annotations

from pathlib import Path

from jsonargparse.typing import NonNegativeInt, PositiveInt

from p3dmm.commands import CommandError


def run(*, registered: list[Path], out: Path, views: NonNegativeInt = 8, size: PositiveInt = 256,
        photos: NonNegativeInt = 4, samples_per_shard: PositiveInt = 128, val_fraction: float = 0.1, seed: int = 0,
        include_rejected: bool = False, view: dict[str, float | list[float]] | None = None,
        address: str | None = None, num_cpus: PositiveInt | None = None, progress: bool = True) -> int:
    """Render multiview training samples of registered scans into WebDataset shards, one Ray task per shard.

    Args:
        registered: one or more `p3dmm register` output folders (they must share the FLAME folder).
        out: shard folder (train-*.tar, val-*.tar, index.json, plan.json, manifest.jsonl).
        views: rendered views per scan (random cameras, lights and backgrounds).
        size: square image side in pixels.
        photos: real views per scan from calibrated photos (FaceScape multi-view, Ava256); 0 for none.
        samples_per_shard: samples per shard.
        val_fraction: fraction of subjects held out for validation (no subject is in both splits).
        seed: global seed; same registrations and config, same shards.
        include_rejected: also render registrations that failed their acceptance checks.
        view: camera spread overrides, e.g. '{"max_yaw": 60, "distance": [0.5, 1.0]}' (see docs/shards.md).
        address: Ray cluster address ("auto" or host:port); default: a local Ray.
        num_cpus: CPUs for the local Ray (default: all).
        progress: show a progress bar.
    """
    from p3dmm.flame.settings import build_settings
    from p3dmm.pipeline.jobs.render import RenderConfig, run_render

    settings = {"views": views, "size": size, "photos": photos, "samples_per_shard": samples_per_shard,
                "val_fraction": val_fraction, "seed": seed, "include_rejected": include_rejected,
                "view": dict(view or {})}
    try:
        config = build_settings(RenderConfig, settings, "render")
        summary, index = run_render(registered, out, config, address=address, num_cpus=num_cpus, progress=progress)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    for line in [*summary.lines(), *index_lines(index, out)]:
        print(line)
    return 1 if summary.failed else 0


def index_lines(index: dict, out: Path) -> list[str]:
    """What a shard index holds, for a person: shards, samples and subjects per split, bytes per sample."""
    lines = [f"{part}: {s['shards']} shards, {s['samples']} samples, {len(s['subjects'])} subjects"
             for part, s in index["splits"].items()]
    total_bytes = sum(e["bytes"] for e in index["shards"].values())
    total = sum(e["samples"] for e in index["shards"].values())
    if total:
        lines.append(f"{total_bytes / total / 1e6:.3f} MB per sample -> {out / 'index.json'}")
    return lines


def verify(*, shards: Path) -> int:
    """Check every shard against index.json (size, sha256, count) and every sample against the schema.

    Args:
        shards: a `p3dmm render` output folder.
    """
    from p3dmm.pipeline.shards.reader import verify_shards

    try:
        n_shards, n_samples, problems = verify_shards(shards)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    for problem in problems:
        print(f"BAD {problem}")
    print(f"{n_shards} shards, {n_samples} samples verified, {len(problems)} problem(s)")
    return 1 if problems else 0


def preview(*, shards: Path, out: Path, n: PositiveInt = 16, seed: int = 0) -> int:
    """Write a PNG grid of samples: RGB | RGB with target UV lines | normals | UV | masks.

    Args:
        shards: a `p3dmm render` output folder.
        out: PNG to write.
        n: number of samples (a seeded random pick).
        seed: which samples.
    """
    from p3dmm.pipeline.shards.preview import write_preview

    try:
        path = write_preview(shards, out, n=n, seed=seed)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    print(f"wrote {path}")
    return 0
