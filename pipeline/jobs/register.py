"""Registration at scale: one Ray task per scan, results in `OUT/registered/`, a manifest, resume.

This module only orchestrates: listing and loading scans is the dataset readers' job
(`p3dmm.pipeline.datasets`), the maths is `p3dmm.registration.register_scan`. Output per scan: `OUT/registered/<name>.npz` with the
registered FLAME-topology vertices (scan frame), FLAME params, metrics and the verdict;
`OUT/manifest.jsonl` one line per finished scan; `OUT/job.json` the resolved job settings.

Starts (docs/registration.md, "Initialisations"): `registration.init` "dataset" starts from the FLAME fit a
reader ships (`ScanGeometry.init_vertices`); `landmarks` "detect" finds landmarks on renders of scans whose
reader gives none (`p3dmm.pipeline.jobs.scan_landmarks`), "detect-always" on every scan.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p3dmm.flame.atomic import atomic_write, remove_stale_temporaries
from p3dmm.flame.scan import ScanGeometry
from p3dmm.pipeline.datasets import reader, reader_options
from p3dmm.pipeline.jobs.manifest import Manifest
from p3dmm.pipeline.jobs.runner import JobSummary, init_ray, run_job
from p3dmm.pipeline.registered import output_name, write_registered
from p3dmm.registration.config import RegistrationConfig

if TYPE_CHECKING:
    from p3dmm.fitting.detect import FaceDetector

LANDMARK_MODES = ("dataset", "detect", "detect-always")
"""`landmarks` of a job: the reader's only; detected where the reader gives none; detected for every scan
(the reader's kept only where no face is found)."""


@dataclass(frozen=True)
class RegisterJob:
    """What every task needs besides its scan record (small, shipped with each task)."""

    source: str
    root: str
    flame_dir: str
    out_dir: str
    source_options: dict = field(default_factory=dict)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    landmarks: str = "dataset"


@functools.lru_cache(maxsize=4)
def _assets(flame_dir: str):
    """Loaded once per worker process and reused by every task it runs."""
    from p3dmm.flame.files import load_assets

    return load_assets(flame_dir)


@functools.lru_cache(maxsize=1)
def _detector() -> FaceDetector:
    """The face detector of `--landmarks detect`, loaded once per worker process."""
    from p3dmm.fitting.detect import FaceDetector

    return FaceDetector()


def _landmarks(scan: ScanGeometry, mode: str) -> tuple[ScanGeometry, str | None]:
    """(scan, note): the scan with landmarks as `mode` (`LANDMARK_MODES`) asks; the note says what detection
    found (None when none was run)."""
    if mode == "dataset":
        return scan, None
    from p3dmm.pipeline.jobs.scan_landmarks import with_landmarks

    return with_landmarks(scan, _detector(), always=mode == "detect-always")


def register_one(payload: tuple[Any, RegisterJob]) -> dict:
    """Ray task body: load one scan, register it, write its result atomically, return a small record."""
    from p3dmm.flame.mesh import MeshError
    from p3dmm.flame.scan import ScanError
    from p3dmm.registration.register import register_scan

    record, job = payload
    try:
        scan = reader(job.source).load_scan(record)
        scan, landmarks_note = _landmarks(scan, job.landmarks)
    except (ScanError, MeshError) as e:
        return {"status": "failed", "reason": str(e)}
    reg = register_scan(scan, _assets(job.flame_dir), job.registration)
    out = Path(job.out_dir) / "registered" / f"{output_name(record.scan_id)}.npz"
    write_registered(out, record, reg.vertices, accepted=reg.accepted, reason=reg.reason, params=reg.params,
                     metrics=reg.metrics)
    result = {
        "status": "ok" if reg.accepted else "rejected",
        "reason": reg.reason,
        "metrics": {k: v for k, v in reg.metrics.items() if isinstance(v, int | float)},
        "output": str(out.relative_to(job.out_dir)),
    }
    if landmarks_note is not None:
        result["landmarks"] = landmarks_note
    return result


def registration_job(source: str, root: str | Path, out: str | Path, flame_dir: str | Path, *,
                     source_options: dict | None = None,
                     registration: RegistrationConfig | None = None, landmarks: str = "dataset") -> RegisterJob:
    """A checked job: the dataset and its required options known, the root there, paths absolute (Ray
    workers on other nodes, or in another working folder, read and write them), the landmark mode one of
    `LANDMARK_MODES`."""
    if landmarks not in LANDMARK_MODES:
        raise ValueError(f"landmarks must be one of {', '.join(LANDMARK_MODES)}, got {landmarks!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root not found")
    options = reader_options(source, dict(source_options or {}))
    return RegisterJob(source=source, root=str(root.resolve()), flame_dir=str(Path(flame_dir).resolve()),
                       out_dir=str(Path(out).resolve()), source_options=options,
                       registration=registration or RegistrationConfig(), landmarks=landmarks)


def run_registration(
    job: RegisterJob,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> JobSummary:
    """List the scans, skip the finished ones, register the rest on Ray; returns the summary."""
    records = list(reader(job.source).iter_records(job.root, **job.source_options))
    if limit is not None:
        records = records[:limit]
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "job.json", (json.dumps(asdict(job), indent=2, default=str) + "\n").encode())
    started = init_ray(address, num_cpus)
    remove_stale_temporaries(out / "registered")  # a worker killed mid-write in an earlier run
    manifest = Manifest(out / "manifest.jsonl")
    items = [(r.scan_id, (r, job)) for r in records]
    try:
        return run_job(items, register_one, manifest, desc=f"register {job.source}", progress=progress)
    finally:
        if started:
            import ray

            ray.shutdown()

