"""Writing shards: deterministic tar members, streamed atomically with their size and sha256 for the index."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable
from pathlib import Path

from p3dmm.flame.atomic import atomic_writer


def tar_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> Iterable[tuple[tarfile.TarInfo, bytes]]:
    """Deterministic tar headers (mtime 0, root, 0444) so the same samples give the same shard bytes."""
    for key, members in samples:
        for name in sorted(members):
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mtime, info.mode = len(members[name]), 0, 0o444
            info.uname = info.gname = "root"
            yield info, members[name]


def write_shard(path: str | Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> dict:
    """Stream samples into `path` atomically; returns {"samples", "bytes", "sha256"}. An exception from
    `samples` (or a crash) leaves no file at `path`."""

    class Hashing(io.RawIOBase):
        def __init__(self, handle):
            self.handle, self.hash, self.size = handle, hashlib.sha256(), 0

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            self.hash.update(data)
            self.size += len(data)
            return self.handle.write(data)

    seen: set[str] = set()
    with atomic_writer(path) as handle:
        sink = Hashing(handle)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for info, data in tar_bytes(_count(samples, seen)):
                tar.addfile(info, io.BytesIO(data))
    return {"samples": len(seen), "bytes": sink.size, "sha256": sink.hash.hexdigest()}


def _count(samples, seen: set):
    for key, members in samples:
        seen.add(key)
        yield key, members
