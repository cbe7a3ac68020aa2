"""A resumable Ray job: one task per item, a manifest as results land, progress, a summary.

The driver knows nothing of what a task computes. A task takes one item and returns a small dict
with at least `status` ("ok", "rejected" or "failed") and `reason`; it writes its own outputs
atomically. Bad input is a returned "failed" (recorded, skipped, never retried); a full disk or a
read-only output is an "error" (recorded, done again by the next run); a raised exception
of a transient kind is retried by Ray (`retry_exceptions`); a dead worker is retried (`max_retries`).
At most `max_in_flight` tasks are pending, so memory stays bounded for any number of items.
"""

from __future__ import annotations

import errno
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from p3dmm.pipeline.jobs.manifest import Manifest

FINISHED = ("ok", "rejected", "failed")
# a full disk or a read-only / over-quota output: recorded as "error" (not finished), so a rerun redoes it
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


@dataclass
class JobSummary:
    total: int
    skipped: int
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        done = sum(self.counts.values())
        out = [f"{self.total} items: {self.skipped} already finished, {done} run in {self.seconds:.1f} s "
               f"({', '.join(f'{k} {v}' for k, v in sorted(self.counts.items())) or 'nothing to do'})"]
        out += [f"  failed {item}: {reason}" for item, reason in self.failed]
        return out


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Local Ray by default (num_cpus caps it); an existing cluster with address ("auto" or host:port).

    Returns True when this call connected (the caller then shuts Ray down when done), False when Ray
    was already initialised by the caller's program.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


def run_job(
    items: Sequence[tuple[str, Any]],
    task: Callable[[Any], dict],
    manifest: Manifest,
    *,
    skip: tuple[str, ...] = FINISHED,
    max_in_flight: int | None = None,
    max_retries: int = 3,
    num_cpus_per_task: float = 1.0,
    progress: bool = True,
    desc: str = "job",
) -> JobSummary:
    """Run `task(payload)` for every (id, payload) not yet in the manifest with a status in `skip`."""
    import ray
    from tqdm import tqdm

    todo = [(i, p) for i, p in items if not manifest.done(i, skip)]
    summary = JobSummary(total=len(items), skipped=len(items) - len(todo))
    for item_id, _ in items:  # failures of earlier runs stay on the list until the input is fixed
        entry = manifest.entries.get(item_id)
        if entry is not None and entry.get("status") == "failed" and manifest.done(item_id, skip):
            summary.failed.append((item_id, f"{entry.get('reason')} (earlier run)"))
    remote = ray.remote(num_cpus=num_cpus_per_task, max_retries=max_retries,
                        retry_exceptions=list(TRANSIENT_ERRORS))(_guarded(task))
    limit = max_in_flight or max(2, 2 * int(ray.available_resources().get("CPU", 1)))
    start = time.perf_counter()
    pending: dict[Any, str] = {}
    queue = list(todo)
    bar = tqdm(total=len(todo), desc=desc, unit="item", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                item_id, payload = queue.pop(0)
                pending[remote.remote(payload)] = item_id
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                item_id = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # retries exhausted: record, go on
                    result = {"status": "failed", "reason": f"{type(e).__name__}: {_first_line(e)}"}
                entry = {"id": item_id, **result, "finished_at": time.time()}
                manifest.append(entry)
                status = entry.get("status", "failed")
                summary.counts[status] = summary.counts.get(status, 0) + 1
                if status in ("failed", "error"):
                    summary.failed.append((item_id, str(entry.get("reason"))))
                bar.update(1)
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
    return summary


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else ""


def _failed(e: BaseException) -> dict:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    return {"status": "failed", "reason": f"{type(e).__name__}: {_first_line(e)}{where}"}


def _guarded(task: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """Unexpected errors become a 'failed' record with the traceback's last line; transient ones raise."""

    def run(payload: Any) -> dict:
        try:
            return task(payload)
        except TRANSIENT_ERRORS:
            raise
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                return _failed(e)
            # the machine's fault, not the input's: recorded as "error", which a rerun does again
            return {"status": "error", "reason": f"{type(e).__name__}: {_first_line(e)}"}
        except Exception as e:
            return _failed(e)

    run.__name__ = getattr(task, "__name__", "task")
    return run
