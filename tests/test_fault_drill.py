"""Fault drill with real Ray and the real `p3dmm` CLI: a Ray worker killed mid-task and the driver killed
mid-run, then rerun, must lose nothing and duplicate nothing (compared with a clean run); an unwritable
output folder and a full disk must fail clearly and leave nothing half-written; and `p3dmm render` on a
two-node Ray cluster started with `ray start` on this machine.

The drills find the processes of the run they started through /proc (the driver's descendants, checked
by start time before any kill), so other Ray sessions on the machine are never touched.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from p3dmm.cli import main

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

FAST = json.dumps({"fit_iterations": 24, "align_candidates": 8})
RENDER = ["--views", "2", "--photos", "0", "--size", "48", "--samples_per_shard", "1", "--progress", "false",
          "--include_rejected", "true"]  # quick registrations may be rejected: render them all the same
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}  # the same threads as the in-process clean run
CLI = [sys.executable, "-m", "p3dmm"]
TIMEOUT = 600


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """A 1000-vertex synthetic FLAME and four generic scans (two subjects, two expressions)."""
    from p3dmm.flame.files import load_assets
    from p3dmm.flame.synth import write_synthetic_flame
    from p3dmm.pipeline.datasets import write_synthetic

    root = tmp_path_factory.mktemp("drill")
    write_synthetic_flame(root / "flame", n_vertices=1000, seed=2)
    write_synthetic("generic", root / "generic", load_assets(root / "flame"), subjects=2, expressions=2, seed=3)
    return root / "flame", root / "generic"


def _register_argv(data: tuple[Path, Path], out: Path) -> list[str]:
    flame, scans = data
    return ["register", "--source", "generic", "--root", str(scans), "--flame", str(flame), "--out", str(out),
            "--num-cpus", "2", "--progress", "false", "--registration", FAST]


def _render_argv(registered: Path, out: Path, *more: str) -> list[str]:
    return ["render", "--registered", str(registered), "--out", str(out), *RENDER, *more]


@pytest.fixture(scope="module")
def clean(data, tmp_path_factory) -> tuple[Path, Path]:
    """The reference: registration and shards of an undisturbed run (in this process, one Ray session for
    both commands: its workers start and import once)."""
    from p3dmm.pipeline.jobs.runner import init_ray

    root = tmp_path_factory.mktemp("clean")
    started = init_ray(None, 2)
    try:
        assert main(_register_argv(data, root / "reg")) == 0
        assert main([*_render_argv(root / "reg", root / "shards"), "--num-cpus", "2"]) == 0
    finally:
        if started:
            import ray

            ray.shutdown()
    return root / "reg", root / "shards"


# ------------------------------------------------------------------ processes, from /proc


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), fields[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] != "Z":
            table[int(entry.name)] = (stat[1], stat[2])
    return table


def _descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    found, frontier = set(), set(roots)
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pid: int, start: str) -> bool:
    """The same process (pid and start time) still runs: a reused pid is never mistaken for it."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == start


def _kill(pid: int, start: str) -> None:
    if _alive(pid, start):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_gone(procs: dict[int, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p, s) for p, s in procs.items()) and time.monotonic() < deadline:
        time.sleep(0.1)


def _wait_for(condition: Callable[[], object], what: str, timeout: float = TIMEOUT, tick: Callable | None = None,
              every: float = 0.05):
    """Poll `condition` until it returns something truthy; `tick` runs every round (it may fail the test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        if result := condition():
            return result
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Driver:
    """A `p3dmm` command run as a subprocess that the test can kill, with every process it started."""

    proc: subprocess.Popen
    log: Path
    seen: dict[int, str] = field(default_factory=dict)  # pid -> start time of each descendant seen

    @classmethod
    def start(cls, argv: list[str], log: Path) -> Driver:
        with open(log, "wb") as f:
            proc = subprocess.Popen([*CLI, *argv], stdout=f, stderr=subprocess.STDOUT, env=ENV,
                                    start_new_session=True)
        return cls(proc, log)

    def tree(self) -> dict[int, str]:
        """Current descendants (pid -> command line), remembered for the clean-up."""
        table = _processes()
        kids = _descendants({self.proc.pid}, table)
        self.seen.update({pid: table[pid][1] for pid in kids})
        return {pid: _cmdline(pid) for pid in kids}

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"the driver ended before it was killed (exit {self.proc.returncode}):\n"
                        f"{self.output()[-4000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the driver alone; give the orphaned Ray workers time to stop on their own, then end
        whatever of this run is left (Ray's agents outlive a killed driver)."""
        self.tree()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        workers = {p: s for p, s in self.seen.items() if _cmdline(p).startswith("ray::") and
                   not _cmdline(p).endswith("Agent")}
        _wait_gone(workers, timeout=60)
        self.cleanup()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid, start in self.seen.items():
            _kill(pid, start)
        _wait_gone(self.seen, timeout=10)


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, env=ENV, timeout=TIMEOUT)


# ------------------------------------------------------------------ comparing with the clean run


def _manifest_ids(path: Path) -> Counter:
    """How many lines each id has (lines that do not parse, a torn write, are what a reader ignores)."""
    ids = Counter()
    for line in (path.read_text() if path.exists() else "").splitlines():
        try:
            ids[json.loads(line)["id"]] += 1
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return ids


def _final_entries(out: Path) -> dict[str, dict]:
    from p3dmm.pipeline.jobs.manifest import Manifest

    return Manifest(out / "manifest.jsonl").entries


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.rglob(".*.tmp"))


def _tmp_writer(path: Path) -> int:
    """The pid in an atomic_writer temporary name: .<name>.<pid>.<random>.tmp"""
    return int(path.name.split(".")[-3])


def _no_timings(metrics: dict) -> str:
    """Metrics without the wall-clock timings (t_*_s): what a deterministic registration must reproduce."""
    return json.dumps({k: v for k, v in metrics.items() if not k.startswith("t_")}, sort_keys=True)


def _assert_same_registrations(out: Path, reference: Path) -> None:
    ids = _manifest_ids(out / "manifest.jsonl")
    want = _final_entries(reference)
    assert ids == Counter(set(want)), f"each scan exactly once: {ids}"
    got = _final_entries(out)
    for scan_id, entry in want.items():
        assert got[scan_id]["status"] == entry["status"] and got[scan_id]["output"] == entry["output"], scan_id
        assert _no_timings(got[scan_id]["metrics"]) == _no_timings(entry["metrics"]), scan_id
    names = sorted(p.name for p in (reference / "registered").iterdir())
    assert sorted(p.name for p in (out / "registered").iterdir() if not p.name.startswith(".")) == names
    for name in names:
        with np.load(out / "registered" / name) as a, np.load(reference / "registered" / name) as b:
            assert sorted(a.files) == sorted(b.files), name
            for key in b.files:
                if key == "metrics":
                    assert _no_timings(json.loads(str(a[key]))) == _no_timings(json.loads(str(b[key]))), name
                else:
                    assert np.array_equal(a[key], b[key]), (name, key)


def _assert_same_shards(out: Path, reference: Path) -> None:
    index, want = (json.loads((d / "index.json").read_text()) for d in (out, reference))
    assert index["complete"] and index["shards"] == want["shards"] and index["splits"] == want["splits"]
    ids = _manifest_ids(out / "manifest.jsonl")
    assert ids == Counter(set(want["shards"])), f"each shard exactly once: {ids}"
    assert all(e["status"] == "ok" for e in _final_entries(out).values())
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert tars == sorted(want["shards"])
    for name in tars:
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == want["shards"][name]["sha256"], name


# ------------------------------------------------------------------ 1. the fault drill


def _stop_mid_run(driver: Driver, out: Path, n: int, ready: Callable[[], bool]) -> dict[str, dict]:
    """Once `ready()`, freeze the driver (SIGSTOP: it records nothing more) and, if its manifest then holds
    some but not all of the n items, SIGKILL it; returns the entries it left. Freezing first makes the
    count exact however fast the last tasks finish."""

    def attempt() -> dict[str, dict] | None:
        if not ready():
            return None
        os.kill(driver.proc.pid, signal.SIGSTOP)
        entries = _final_entries(out)
        if 1 <= len(entries) < n:
            return entries
        os.kill(driver.proc.pid, signal.SIGCONT)
        return None

    entries = _wait_for(attempt, "a moment with some but not all items done", tick=driver.check_running,
                        every=0.01)
    driver.kill()
    return entries


@pytest.fixture(scope="module")
def register_drill(data, clean, tmp_path_factory) -> dict:
    """`p3dmm register`: SIGKILL a worker running a scan; once Ray reports the retry and a scan is in the
    manifest while another is still running, SIGKILL the driver; rerun the same command to completion."""
    out = tmp_path_factory.mktemp("faulted") / "reg"
    argv = _register_argv(data, out)
    n = len(_final_entries(clean[0]))
    driver = Driver.start(argv, out.parent / "first.log")

    def ready() -> bool:
        return ("will be retried" in driver.output() and _lines(out / "manifest.jsonl") >= 1
                and any(c.startswith("ray::run") for c in driver.tree().values()))

    try:
        worker = _wait_for(lambda: next((p for p, c in driver.tree().items() if c.startswith("ray::run")), None),
                           "a Ray worker running a registration", tick=driver.check_running)
        os.kill(worker, signal.SIGKILL)
        before = _stop_mid_run(driver, out, n, ready)
    finally:
        driver.cleanup()
    rerun = _run(argv)
    return {"out": out, "n": n, "before": before, "first": driver.output(), "rerun": rerun, "killed": {worker}}


def test_register_drill_loses_nothing_and_duplicates_nothing(register_drill, clean):
    d = register_drill
    assert 1 <= len(d["before"]) < d["n"], "the driver was killed mid-run"
    assert "will be retried" in d["first"], d["first"][-4000:]  # Ray saw the dead worker and retried its task
    assert d["rerun"].returncode == 0, d["rerun"].stdout + d["rerun"].stderr
    assert f"{len(d['before'])} already finished" in d["rerun"].stdout  # finished scans are not redone
    _assert_same_registrations(d["out"], clean[0])
    # a SIGKILL during the brief write of a result could leave that worker's temporary (see the render
    # drill); nothing else may remain
    assert [p for p in _temporaries(d["out"]) if _tmp_writer(p) not in d["killed"]] == []


def _tmp_target(path: Path) -> str:
    """The file an atomic_writer temporary is for: .<name>.<pid>.<random>.tmp -> <name>"""
    return ".".join(path.name[1:].split(".")[:-3])


@pytest.fixture(scope="module")
def render_drill(clean, tmp_path_factory) -> dict:
    """`p3dmm render`: SIGKILL the worker writing a shard while its temporary file is open (mid-shard); once
    Ray retries that shard (a new writer, or its manifest entry) and a shard is done while another is being
    written, SIGKILL the driver; rerun the same command to completion."""
    registered, reference = clean
    out = tmp_path_factory.mktemp("faulted") / "shards"
    argv = [*_render_argv(registered, out), "--num-cpus", "2"]
    n = len(json.loads((reference / "index.json").read_text())["shards"])
    driver = Driver.start(argv, out.parent / "first.log")
    killed: dict[int, str] = {}  # writer pid -> shard
    retried: list[str] = []

    def kill_a_shard_writer() -> bool:
        workers = driver.tree()
        for tmp in _temporaries(out) if out.exists() else []:
            pid = _tmp_writer(tmp)
            if pid in workers and pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed[pid] = _tmp_target(tmp)
                _wait_gone({pid: driver.seen[pid]}, timeout=30)
                return tmp.exists()  # still there once its writer is dead: it was killed mid-shard
        return False

    def ready() -> bool:
        done = set(_manifest_ids(out / "manifest.jsonl"))
        writing = {_tmp_target(t) for t in _temporaries(out) if _tmp_writer(t) not in killed}
        victim = list(killed.values())[-1]
        if not retried and (victim in writing or victim in done):
            retried.append("a new writer" if victim in writing else "its manifest entry")
        return bool(retried) and len(done) >= 1 and bool(writing - done)

    try:
        _wait_for(kill_a_shard_writer, "a Ray worker writing a shard", tick=driver.check_running)
        before = _stop_mid_run(driver, out, n, ready)
    finally:
        driver.cleanup()
    rerun = _run(argv)
    return {"out": out, "n": n, "before": before, "first": driver.output(), "rerun": rerun,
            "killed": set(killed), "retried": retried}


def test_render_drill_loses_nothing_and_duplicates_nothing(render_drill, clean):
    d = render_drill
    assert 1 <= len(d["before"]) < d["n"], "the driver was killed mid-run"
    assert d["retried"], "Ray retried the shard of the killed worker"
    assert d["rerun"].returncode == 0, d["rerun"].stdout + d["rerun"].stderr
    assert f"{len(d['before'])} already finished" in d["rerun"].stdout
    _assert_same_shards(d["out"], clean[1])
    stray = [p for p in _temporaries(d["out"]) if _tmp_writer(p) not in d["killed"]]
    assert stray == [], "only the SIGKILLed writer may leave its temporary behind"


def test_render_drill_leaves_no_temporary_files(render_drill):
    assert _temporaries(render_drill["out"]) == []


# ------------------------------------------------------------------ 2. unwritable output, full disk


@pytest.fixture(scope="module")
def unwritable(data, clean, tmp_path_factory) -> dict:
    """Every writing command pointed at an output folder below a regular file (which no one, root
    included, can create), run as a user would, all at once: command -> (path, stdout, stderr, exit)."""
    flame, scans = data
    root = tmp_path_factory.mktemp("unwritable")
    blocker = root / "blocker"
    blocker.write_text("a file, not a folder\n")
    images = root / "images"
    images.mkdir()
    cases = {
        "register": (blocker / "reg", _register_argv(data, blocker / "reg")),
        "render": (blocker / "shards", [*_render_argv(clean[0], blocker / "shards"), "--num-cpus", "1"]),
        "fit": (blocker / "fit", ["fit", "--priors", str(root / "priors.pt"), "--images", str(images), "--flame",
                                  str(flame), "--out", str(blocker / "fit"), "--progress", "false"]),
        "run": (blocker / "run", ["run", "--out", str(blocker / "run"), "--datasets",
                                  json.dumps([{"source": "generic", "root": str(scans)}]),
                                  "--flame", json.dumps({"path": str(flame)}), "--progress", "false"]),
    }
    procs = {name: subprocess.Popen([*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=ENV) for name, (_, argv) in cases.items()}
    done = {name: (cases[name][0], *p.communicate(timeout=TIMEOUT), p.returncode) for name, p in procs.items()}
    return {"root": root, "blocker": blocker, "results": done}


@pytest.mark.parametrize("command", ["register", "render", "fit", "run"])
def test_unwritable_output_fails_naming_the_path(unwritable, command):
    path, out, err, code = unwritable["results"][command]
    assert code != 0, out + err
    assert str(path) in err, err[-2000:]
    assert unwritable["blocker"].read_text() == "a file, not a folder\n"
    assert sorted(p.name for p in unwritable["root"].iterdir()) == ["blocker", "images"]  # nothing written


@pytest.mark.parametrize("command", ["register", "render", "fit", "run"])
def test_unwritable_output_is_a_one_line_error(unwritable, command):
    path, _, err, code = unwritable["results"][command]
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert any(line.startswith("p3dmm: error: ") and str(path) in line for line in err.splitlines())


class FullDisk:
    """A writable file whose disk fills up after `room` more bytes: a write that does not fit lands in
    part and then fails with ENOSPC, as on a real full disk."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data):
        if len(data) > self.room:
            self.handle.write(data[: self.room])
            self.handle.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.fixture
def full_disk(monkeypatch) -> Callable[[int], None]:
    """full_disk(room): from now on, files opened by atomic_writer fill the disk after `room` bytes."""

    def fill(room: int) -> None:
        real = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(real(fd, *a, **k), room))

    return fill


def _assert_disk_full_error(error: BaseException, path: Path) -> None:
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert str(path) in str(error) and "No space left on device" in str(error), str(error)


def _sample() -> dict[str, bytes]:
    from p3dmm.pipeline.shards.format import encode_flags, encode_sample

    rng = np.random.default_rng(0)
    flags = encode_flags(np.ones((8, 8), bool), np.ones((8, 8), bool))
    return encode_sample("a", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), np.tile([0, 0, 1.0], (8, 8, 1)),
                         rng.random((8, 8, 2)), flags, np.full((8, 8), 0.5), {"x": 1})


def test_full_disk_mid_shard_names_the_shard_and_leaves_nothing(tmp_path, full_disk):
    from p3dmm.pipeline.shards.writer import write_shard

    full_disk(5000)
    target = tmp_path / "train-000000.tar"
    with pytest.raises(OSError) as info:
        write_shard(target, iter([(f"k{i}", _sample()) for i in range(4)]))
    _assert_disk_full_error(info.value, target)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_mid_registration_is_recorded_naming_the_file(tmp_path, full_disk):
    from p3dmm.flame.atomic import atomic_write
    from p3dmm.pipeline.jobs.runner import _guarded

    target = tmp_path / "registered" / "generic__head0_0.npz"
    target.parent.mkdir()
    target.write_bytes(b"an earlier registration")
    full_disk(100)
    with pytest.raises(OSError) as info:
        atomic_write(target, bytes(5000))
    _assert_disk_full_error(info.value, target)
    assert target.read_bytes() == b"an earlier registration"  # the old file, whole
    assert list(target.parent.iterdir()) == [target]
    # inside a Ray task (the job's wrapper): a failed record whose reason names the file and the cause
    record = _guarded(lambda path: atomic_write(path, bytes(5000)))(target)
    assert record["status"] == "error" and str(target) in record["reason"]
    assert "No space left on device" in record["reason"]


def test_a_scan_failed_for_a_full_disk_is_redone_by_the_next_run(tmp_path, full_disk):
    from p3dmm.flame.atomic import atomic_write
    from p3dmm.pipeline.jobs.manifest import Manifest
    from p3dmm.pipeline.jobs.runner import FINISHED, _guarded

    full_disk(100)
    record = _guarded(lambda path: atomic_write(path, bytes(5000)))(tmp_path / "scan.npz")
    Manifest(tmp_path / "manifest.jsonl").append({"id": "scan", **record})  # as run_job records it
    assert not Manifest(tmp_path / "manifest.jsonl").done("scan", FINISHED)  # what run_job asks


def test_full_disk_mid_manifest_line_is_not_trusted_and_next_run_is_readable(tmp_path, monkeypatch):
    import p3dmm.pipeline.jobs.manifest as manifest_module
    from p3dmm.pipeline.jobs.manifest import Manifest

    path = tmp_path / "manifest.jsonl"
    manifest = Manifest(path)
    manifest.append({"id": "a", "status": "ok"})
    monkeypatch.setattr(manifest_module, "open", lambda *a, **k: FullDisk(open(*a, **k), 10), raising=False)
    with pytest.raises(OSError) as info:
        manifest.append({"id": "b", "status": "ok", "output": "x" * 100})
    assert info.value.errno == errno.ENOSPC and "No space left on device" in str(info.value)
    assert "b" not in manifest.entries
    monkeypatch.undo()
    assert not path.read_text().endswith("\n")  # the torn line is on disk
    rerun = Manifest(path)
    assert set(rerun.entries) == {"a"}  # ...and not trusted: b is redone
    rerun.append({"id": "b", "status": "ok"})
    rerun.append({"id": "c", "status": "ok"})
    assert set(Manifest(path).entries) == {"a", "b", "c"}  # the torn line swallows no later entry


# ------------------------------------------------------------------ 3. two Ray nodes on one machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_processes(temp_dir: str) -> dict[int, str]:
    """Every process of the cluster that uses `temp_dir` (its paths are in the command lines of the
    servers and raylets; agents and workers are their descendants): pid -> start time."""
    table = _processes()
    own = {pid for pid in table if temp_dir in _cmdline(pid) and pid != os.getpid()}
    return {pid: table[pid][1] for pid in own | _descendants(own, table)}


def _raylet_with_task(temp_dir: str) -> set[int]:
    """Raylets of this cluster that have a worker executing a task right now."""
    table = _processes()
    raylets = {pid for pid in table if temp_dir in _cmdline(pid) and "/raylet " in _cmdline(pid)}
    return {ppid for pid, (ppid, _) in table.items() if ppid in raylets and _cmdline(pid).startswith("ray::run")}


def test_render_on_a_two_node_ray_cluster(clean, tmp_path):
    """`ray start --head` plus `ray start --address` (two raylets, one CPU each), the render driver joining
    with --address; both nodes run shard tasks and the shards equal the local run's."""
    registered, reference = clean
    temp_dir = tempfile.mkdtemp(prefix="rd", dir="/tmp")  # short: Ray's socket paths live below it
    env = {**ENV, "RAY_AUTH_MODE": "disabled"}  # the worker node has no token to join a token cluster
    port = _free_port()
    ray_cli = [str(Path(sys.executable).parent / "ray"), "start", "--num-cpus", "1", "--disable-usage-stats",
               "--node-ip-address", "127.0.0.1"]
    try:
        for extra in (["--head", "--port", str(port), "--temp-dir", temp_dir, "--include-dashboard", "false",
                       "--dashboard-port", str(_free_port())],
                      ["--address", f"127.0.0.1:{port}"]):
            started = subprocess.run([*ray_cli, *extra], capture_output=True, text=True, env=env, timeout=180)
            assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        alive = f"import json, ray; ray.init(address='127.0.0.1:{port}'); print(json.dumps([n['Alive'] for n in ray.nodes()]))"
        nodes = subprocess.run([sys.executable, "-c", alive],
                               capture_output=True, text=True, env=env, timeout=180)
        assert json.loads(nodes.stdout.strip().splitlines()[-1]) == [True, True], nodes.stdout + nodes.stderr

        out = tmp_path / "shards"
        busy: set[int] = set()
        with open(tmp_path / "render.log", "wb") as log:
            proc = subprocess.Popen([*CLI, *_render_argv(registered, out, "--address", f"127.0.0.1:{port}")],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while proc.poll() is None:
                busy |= _raylet_with_task(temp_dir)
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        text = (tmp_path / "render.log").read_text()
        assert proc.returncode == 0, text[-4000:]
        assert len(busy) == 2, f"tasks ran under {len(busy)} raylet(s)"
        _assert_same_shards(out, reference)
    finally:
        procs = _cluster_processes(temp_dir)
        for pid, start in procs.items():  # `ray stop` would stop every Ray on this machine
            _kill(pid, start)
        _wait_gone(procs, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
