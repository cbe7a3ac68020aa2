"""Read the metrics of an offline wandb run folder without a server (tests, reports, quick looks).

wandb >= 0.20 writes `run-<id>.wandb` as a LevelDB-style log (a 7-byte ':W&B' header, 32 KiB blocks,
records of crc32 / length / type / payload) of protobuf `Record`s; history rows are `Record.history`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32768
HEADER = 7


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path}: not a wandb run file")
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        chunk = data[pos : pos + length]
        pos += length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""
        elif kind == 0:
            pos += left - 7 - length  # zero fill to the end of the block


def read_history(run_dir: str | os.PathLike) -> list[dict]:
    """History rows ({metric: value, '_step': n, ...}) of an offline run folder (offline-run-*)."""
    from wandb.proto import wandb_internal_pb2

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file (not a wandb run folder)")
    rows = []
    for raw in _records(files[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            try:
                row[key] = json.loads(item.value_json)
            except ValueError:
                row[key] = item.value_json
        rows.append(row)
    return rows
