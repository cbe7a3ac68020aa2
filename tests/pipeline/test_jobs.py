"""The resumable Ray job runner, with real Ray: retries, bad input, resume after a killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ray = pytest.importorskip("ray")
from ray import cloudpickle  # noqa: E402

from p3dmm.pipeline.jobs.manifest import Manifest  # noqa: E402
from p3dmm.pipeline.jobs.runner import run_job  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test tasks travel to workers by value


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def square_or_refuse(payload):
    value, marker_dir = payload
    if value < 0:
        return {"status": "failed", "reason": f"item {value}: negative input"}
    if value == 3 and marker_dir is not None:  # kill our own worker process once
        marker = os.path.join(marker_dir, "crashed-once")
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
    if value == 5:
        raise ValueError("an unexpected bug")
    return {"status": "ok", "reason": None, "value": value * value}


def test_every_item_recorded_bad_input_skipped_and_dead_worker_retried(tmp_path):
    manifest = Manifest(tmp_path / "manifest.jsonl")
    items = [(f"item{i}", (i, str(tmp_path))) for i in (-1, 0, 1, 2, 3, 4, 5)]
    summary = run_job(items, square_or_refuse, manifest, progress=False)
    entries = Manifest(tmp_path / "manifest.jsonl").entries
    assert set(entries) == {i for i, _ in items}
    assert entries["item3"]["status"] == "ok" and entries["item3"]["value"] == 9  # retried after os._exit
    assert (tmp_path / "crashed-once").exists()
    assert entries["item-1"]["status"] == "failed" and "negative" in entries["item-1"]["reason"]
    assert entries["item5"]["status"] == "failed" and "ValueError: an unexpected bug" in entries["item5"]["reason"]
    assert summary.counts == {"ok": 5, "failed": 2}

    again = run_job(items, square_or_refuse, Manifest(tmp_path / "manifest.jsonl"), progress=False)
    assert again.skipped == len(items) and again.counts == {}
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == len(items)  # nothing duplicated


def test_torn_manifest_line_is_redone(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps({"id": "a", "status": "ok"}) + "\n" + '{"id": "b", "sta')
    m = Manifest(path)
    assert m.done("a", ("ok",)) and not m.done("b", ("ok",))


DRIVER = textwrap.dedent(
    """
    import sys, time
    import ray
    from p3dmm.pipeline.jobs.runner import run_job
    from p3dmm.pipeline.jobs.manifest import Manifest

    def slow(payload):
        time.sleep(0.4)
        return {"status": "ok", "reason": None, "value": payload}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    run_job([(f"s{i}", i) for i in range(12)], slow, Manifest(sys.argv[1]), progress=False)
    """
)


def slow(payload):
    time.sleep(0.05)
    return {"status": "ok", "reason": None, "value": payload}


def test_killed_driver_rerun_loses_nothing_and_duplicates_nothing(tmp_path):
    path = tmp_path / "manifest.jsonl"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = Manifest(path).entries
    assert 3 <= len(before) < 12, "the driver must be killed mid-run"

    items = [(f"s{i}", i) for i in range(12)]
    summary = run_job(items, slow, Manifest(path), progress=False)
    assert summary.skipped == len(before)
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]
    assert sorted(ids) == sorted(i for i, _ in items)  # each exactly once
