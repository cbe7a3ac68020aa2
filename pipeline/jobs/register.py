"""Registration at scale: one Ray task per scan, results in `OUT/registered/`, a manifest, resume.

This module only orchestrates: listing scans is the adapters' job (`p3dmm.pipeline.datasets`), the
maths is `p3dmm.registration.register_scan`. Output per scan: `OUT/registered/<name>.npz` with the
registered FLAME-topology vertices (scan frame), FLAME params, metrics and the verdict;
`OUT/manifest.jsonl` one line per finished scan; `OUT/job.json` the resolved job settings.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p3dmm.flame.atomic import atomic_write, remove_stale_temporaries
from p3dmm.pipeline.datasets import adapter
from p3dmm.pipeline.jobs.manifest import Manifest
from p3dmm.pipeline.jobs.runner import JobSummary, init_ray, run_job
from p3dmm.pipeline.registered import output_name


@dataclass(frozen=True)
class RegisterJob:
    """What every task needs besides its scan record (small, shipped with each task)."""

    source: str
    root: str
    flame_dir: str
    out_dir: str
    source_options: dict = field(default_factory=dict)
    registration: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def _assets(flame_dir: str):
    """Loaded once per worker process and reused by every task it runs."""
    from p3dmm.flame.files import load_assets

    return load_assets(flame_dir)


def register_one(payload: tuple[Any, RegisterJob]) -> dict:
    """Ray task body: load one scan, register it, write its result atomically, return a small record."""
    from p3dmm.flame.mesh import MeshError
    from p3dmm.flame.scan import ScanError
    from p3dmm.registration.config import RegistrationConfig
    from p3dmm.registration.register import register_scan

    record, job = payload
    try:
        scan = adapter(job.source).load_scan(record)
    except (ScanError, MeshError) as e:
        return {"status": "failed", "reason": str(e)}
    reg = register_scan(scan, _assets(job.flame_dir), RegistrationConfig(**job.registration))
    name = output_name(record.scan_id)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        scan_id=record.scan_id,
        vertices=np.asarray(reg.vertices, dtype=np.float64),
        accepted=reg.accepted,
        reason=str(reg.reason or ""),
        params=json.dumps(reg.params, default=_jsonable),
        metrics=json.dumps(reg.metrics, default=_jsonable),
        record=json.dumps(asdict(record), default=_jsonable),
    )
    out = Path(job.out_dir) / "registered" / f"{name}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, buffer.getvalue())
    return {
        "status": "ok" if reg.accepted else "rejected",
        "reason": reg.reason,
        "metrics": {k: v for k, v in reg.metrics.items() if isinstance(v, int | float)},
        "output": str(out.relative_to(job.out_dir)),
    }


def _jsonable(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def run_registration(
    job: RegisterJob,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> JobSummary:
    """List the scans, skip the finished ones, register the rest on Ray; returns the summary."""
    records = list(adapter(job.source).iter_records(job.root, **job.source_options))
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

