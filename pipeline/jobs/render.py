"""Shard rendering at scale: registered scans in, WebDataset shards of training samples out.

The plan (which samples go in which shard) is a pure function of the registered scans and the config,
stored in `OUT/plan.json` by the first run; a rerun checks it is unchanged and skips finished shards
(manifest). One Ray task per shard renders its samples and writes the tar under a temporary name, then
renames it, so a crash never leaves a partial shard visible. `OUT/index.json` (counts, bytes, sha256,
splits) is rewritten from the manifest at the end of every run. The maths lives in
:mod:`~p3dmm.pipeline.render.views`, :mod:`~p3dmm.pipeline.render.targets`, :mod:`~p3dmm.pipeline.render.appearance` and
:mod:`~p3dmm.pipeline.render.photos`; :mod:`~p3dmm.pipeline.render.sample` puts them together per scan.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from p3dmm.flame.atomic import atomic_write, remove_stale_temporaries
from p3dmm.flame.settings import build_settings
from p3dmm.pipeline.datasets import dataset, reader
from p3dmm.pipeline.jobs.manifest import Manifest
from p3dmm.pipeline.jobs.runner import JobSummary, init_ray, run_job
from p3dmm.pipeline.registered import load_registered, output_name, read_header
from p3dmm.pipeline.render.sample import render_scan_samples, stable_unit
from p3dmm.pipeline.render.views import ViewConfig
from p3dmm.pipeline.shards.format import SCHEMA_VERSION
from p3dmm.pipeline.shards.writer import write_shard


@dataclass(frozen=True)
class RenderConfig:
    """What the shards hold. Changing any of these changes the plan (a new output folder is needed).

    Args:
        views: rendered views per scan.
        size: square image side in pixels.
        photos: real (calibrated photo) views per scan, for datasets that have them (0: none).
        samples_per_shard: samples per shard (the last shard of a split may hold fewer).
        val_fraction: fraction of subjects in the validation split (at least one when there are two).
        seed: global seed; each sample's randomness derives from it and the sample key.
        include_rejected: also render registrations that failed the acceptance checks.
        view: overrides of :class:`~p3dmm.pipeline.render.views.ViewConfig` fields.
    """

    views: int = 8
    size: int = 256
    photos: int = 4
    samples_per_shard: int = 128
    val_fraction: float = 0.1
    seed: int = 0
    include_rejected: bool = False
    view: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.size < 8 or self.views < 0 or self.photos < 0 or self.samples_per_shard < 1:
            raise ValueError(f"size >= 8, views >= 0, photos >= 0 and samples_per_shard >= 1, got {self}")
        build_settings(ViewConfig, self.view, "view")  # a bad camera spread stops here, not in a worker


@dataclass(frozen=True)
class SampleSpec:
    key: str  # unique, dot-free: "<scan name>_r03" (rendered view 3) or "<scan name>_p01" (photo 1)
    registered: str  # path of the registration .npz
    source: str  # dataset layout (adapter) of the scan
    kind: str  # "render" or "photo"
    index: int  # view index, or photo index among the chosen photos
    split: str  # "train" or "val"
    subject: str  # "<dataset>/<subject>": the unit of the train/val split


@dataclass(frozen=True)
class ShardSpec:
    name: str  # "train-000000.tar"
    split: str
    samples: tuple[SampleSpec, ...]


@dataclass(frozen=True)
class RenderJob:
    out_dir: str
    flame_dir: str
    config: RenderConfig


@dataclass(frozen=True)
class RegisteredScan:
    """One entry of a registration output folder, as the planner sees it."""

    npz: str
    source: str
    scan_id: str
    subject: str
    accepted: bool


def list_registered(registered_dirs: Sequence[str | Path]) -> tuple[str, list[RegisteredScan]]:
    """(FLAME folder, scans) of one or more `p3dmm register` output folders; they must share FLAME."""
    flame_dirs, scans = set(), []
    for folder in map(Path, registered_dirs):
        job_file = folder / "job.json"
        if not job_file.is_file():
            raise FileNotFoundError(f"{folder}: not a `p3dmm register` output folder (no job.json)")
        job = json.loads(job_file.read_text())
        flame_dirs.add(str(Path(job["flame_dir"]).resolve()))
        for npz in sorted((folder / "registered").glob("*.npz")):
            header = read_header(npz)
            scans.append(RegisteredScan(npz=str(npz.resolve()), source=job["source"], scan_id=header.scan_id,
                                        subject=f"{header.record.dataset}/{header.record.subject}",
                                        accepted=header.accepted))
    if len(flame_dirs) > 1:
        raise ValueError(f"registrations use different FLAME folders ({', '.join(sorted(flame_dirs))}); "
                         "shards need one topology")
    if not flame_dirs:
        raise ValueError("no registration folders given")
    return flame_dirs.pop(), scans


def split_subjects(subjects: Iterable[str], val_fraction: float, seed: int) -> dict[str, str]:
    """subject -> "train" | "val" by a stable hash (adding subjects never moves existing ones), with at
    least one validation subject when there are two or more and val_fraction > 0."""
    subjects = sorted(set(subjects))
    score = {s: stable_unit("split", seed, s) for s in subjects}
    split = {s: "val" if score[s] < val_fraction else "train" for s in subjects}
    if val_fraction > 0 and len(subjects) >= 2 and "val" not in split.values():
        split[min(subjects, key=score.get)] = "val"
    if len(subjects) >= 2 and "train" not in split.values():
        split[max(subjects, key=score.get)] = "train"
    return split


def plan_shards(scans: Sequence[RegisteredScan], config: RenderConfig) -> list[ShardSpec]:
    """Samples of every usable scan, grouped by scan (a task loads each scan once), cut into shards."""

    usable = [s for s in scans if s.accepted or config.include_rejected]
    split = split_subjects([s.subject for s in usable], config.val_fraction, config.seed)
    by_split: dict[str, list[SampleSpec]] = {"train": [], "val": []}
    for scan in sorted(usable, key=lambda s: s.scan_id):
        name = output_name(scan.scan_id).replace(".", "-")
        part = split[scan.subject]
        for v in range(config.views):
            by_split[part].append(SampleSpec(f"{name}_r{v:02d}", scan.npz, scan.source, "render", v, part, scan.subject))
        if dataset(scan.source).photos:
            for p in range(config.photos):
                by_split[part].append(SampleSpec(f"{name}_p{p:02d}", scan.npz, scan.source, "photo", p, part, scan.subject))
    shards = []
    for part, samples in by_split.items():
        n = config.samples_per_shard
        for i in range(0, len(samples), n):
            shards.append(ShardSpec(f"{part}-{i // n:06d}.tar", part, tuple(samples[i : i + n])))
    return shards


@functools.lru_cache(maxsize=2)
def _assets(flame_dir: str):
    from p3dmm.flame.files import load_assets
    from p3dmm.pipeline.render.targets import uv_region_faces

    assets = load_assets(flame_dir)
    if assets.uv is None:
        raise ValueError(f"{flame_dir}: no UV layout (head_template.obj); UV targets need it")
    return assets, uv_region_faces(assets)


def _by_scan(samples: Sequence[SampleSpec]) -> list[list[SampleSpec]]:
    """A shard's samples grouped by registration, in plan order: each scan is loaded once per shard."""
    groups: dict[str, list[SampleSpec]] = {}
    for spec in samples:
        groups.setdefault(spec.registered, []).append(spec)
    return list(groups.values())


def render_shard(payload: tuple[ShardSpec, RenderJob]) -> dict:
    """Ray task body: render every sample of one shard and write it; returns the shard's index entry."""
    shard, job = payload
    skipped: list[str] = []

    def samples() -> Iterator[tuple[str, dict[str, bytes]]]:
        assets, region_faces = _assets(job.flame_dir)
        for specs in _by_scan(shard.samples):
            reg = load_registered(specs[0].registered)
            scan = reader(specs[0].source).load_scan(reg.record)
            rendered, missing = render_scan_samples(specs, reg, scan, assets, region_faces, job.config)
            skipped.extend(missing)
            yield from rendered

    entry = write_shard(Path(job.out_dir) / shard.name, samples())
    return {"status": "ok", "reason": None, "split": shard.split, **entry, "skipped": skipped}


def write_index(out: Path, shards: Sequence[ShardSpec], manifest: Manifest, config: RenderConfig,
                flame_dir: str) -> dict:
    """index.json from the manifest: per-shard samples/bytes/sha256 of every finished shard, and the splits."""
    entries, splits = {}, {"train": {"shards": 0, "samples": 0, "subjects": set()},
                           "val": {"shards": 0, "samples": 0, "subjects": set()}}
    for shard in shards:
        entry = manifest.entries.get(shard.name)
        if entry is None or entry.get("status") != "ok":
            continue
        entries[shard.name] = {k: entry[k] for k in ("split", "samples", "bytes", "sha256")}
        part = splits[shard.split]
        part["shards"] += 1
        part["samples"] += entry["samples"]
        for spec in shard.samples:
            part["subjects"].add(spec.subject)
    for part in splits.values():
        part["subjects"] = sorted(part["subjects"])
    index = {"schema_version": SCHEMA_VERSION, "size": config.size, "flame_dir": flame_dir,
             "config": asdict(config), "shards": entries, "splits": splits,
             "complete": len(entries) == len(shards)}
    atomic_write(out / "index.json", (json.dumps(index, indent=1) + "\n").encode())
    return index


def run_render(registered: Sequence[str | Path], out: str | Path, config: RenderConfig, *,
               address: str | None = None, num_cpus: int | None = None, progress: bool = True
               ) -> tuple[JobSummary, dict]:
    """Plan (or reload the plan), render the unfinished shards on Ray, write index.json."""
    out = Path(out).resolve()  # workers on other nodes (or in another working folder) write here
    out.mkdir(parents=True, exist_ok=True)
    flame_dir, scans = list_registered(registered)
    shards = plan_shards(scans, config)
    plan = {"config": asdict(config), "flame_dir": flame_dir,
            "shards": [{"name": s.name, "split": s.split, "samples": [asdict(x) for x in s.samples]} for s in shards]}
    plan_file = out / "plan.json"
    if plan_file.is_file():
        if json.loads(plan_file.read_text()) != json.loads(json.dumps(plan)):
            raise ValueError(f"{plan_file}: the registrations or the config changed since these shards were planned; "
                             "render into a new output folder (or delete this one)")
    else:
        atomic_write(plan_file, (json.dumps(plan, indent=1) + "\n").encode())
    job = RenderJob(out_dir=str(out), flame_dir=flame_dir, config=config)
    started = init_ray(address, num_cpus)
    remove_stale_temporaries(out)  # a worker killed mid-shard in an earlier run left its partial file
    manifest = Manifest(out / "manifest.jsonl")
    try:
        summary = run_job([(s.name, (s, job)) for s in shards], render_shard, manifest, skip=("ok",),
                          desc="render shards", progress=progress)
    finally:
        if started:
            import ray

            ray.shutdown()
    return summary, write_index(out, shards, manifest, config, flame_dir)
