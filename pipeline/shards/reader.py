"""Reading, verifying and previewing shard folders (`index.json` + `*.tar`).

The reader is a plain WebDataset pipeline with ``warn_and_continue``: a truncated or corrupt shard is
reported with a warning naming it and the rest of the data is read. `verify_shards` is the strict
counterpart for operators: every shard against the index (size, sha256, sample count) and every
sample against the schema, naming each bad shard and why.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from p3dmm.pipeline.shards.format import (
    Sample,
    SampleError,
    check_sample,
    decode_sample,
)


def read_index(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "index.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no index.json (not a `p3dmm render` output folder)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def shard_paths(folder: str | os.PathLike, split: str | None = None) -> list[str]:
    """Paths of the indexed shards (of one split), sorted."""
    index = read_index(folder)
    return [str(Path(folder) / name) for name, entry in sorted(index["shards"].items())
            if split is None or entry["split"] == split]


def warn_and_skip(exn: Exception) -> bool:
    """A webdataset handler: warn (naming the shard or sample) and go on."""
    warnings.warn(f"skipping unreadable shard data: {exn}", RuntimeWarning, stacklevel=2)
    return True


def iter_samples(paths: list[str], depth: bool = True) -> Iterator[Sample]:
    """Decoded samples of `paths` in order; unreadable shards and samples are skipped with a warning."""
    import webdataset as wds

    dataset = wds.WebDataset(paths, shardshuffle=False, handler=warn_and_skip, empty_check=False)
    for members in dataset:
        try:
            yield decode_sample(members, depth=depth)
        except SampleError as e:
            warn_and_skip(ValueError(f"{members.get('__url__', '?')}: {e}"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_shard(path: Path, entry: dict) -> list[str]:
    """Problems of one shard (empty list when it is good)."""
    if not path.is_file():
        return [f"{path}: missing"]
    size = path.stat().st_size
    if size != entry["bytes"]:
        return [f"{path}: {size} bytes, index says {entry['bytes']} (truncated or rewritten)"]
    if _sha256(path) != entry["sha256"]:
        return [f"{path}: sha256 differs from the index (corrupt)"]
    problems, samples = [], {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                key, _, name = member.name.partition(".")
                samples.setdefault(key, {"__key__": key})[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        return [f"{path}: not a readable tar ({type(e).__name__}: {e})"]
    if len(samples) != entry["samples"]:
        problems.append(f"{path}: {len(samples)} samples, index says {entry['samples']}")
    for members in samples.values():
        try:
            sample = decode_sample(members)
            check_sample(sample)
            if sample.meta.get("split") != entry["split"]:
                raise SampleError(f"{sample.key}: meta split {sample.meta.get('split')!r} in a {entry['split']} shard")
        except SampleError as e:
            problems.append(f"{path}: {e}")
    return problems


def verify_shards(folder: str | os.PathLike) -> tuple[int, int, list[str]]:
    """(shards checked, samples checked, problems) for a shard folder."""
    folder = Path(folder)
    index = read_index(folder)
    problems, n_samples = [], 0
    for name, entry in sorted(index["shards"].items()):
        found = verify_shard(folder / name, entry)
        problems += found
        if not found:
            n_samples += entry["samples"]
    extra = sorted(p.name for p in folder.glob("*.tar") if p.name not in index["shards"])
    problems += [f"{folder / name}: on disk but not in index.json (unfinished run?)" for name in extra]
    train = set(index["splits"]["train"]["subjects"])
    both = train & set(index["splits"]["val"]["subjects"])
    if both:
        problems.append(f"{folder}: subjects in both splits: {', '.join(sorted(both))}")
    return len(index["shards"]), n_samples, problems
