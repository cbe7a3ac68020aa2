"""An append-only JSON-lines manifest: what a batch job has finished, so a rerun skips it.

Each finished item is one line, written and fsynced as its result lands, so a crash or Ctrl-C loses at
most the items still running. Reading keeps the last line per id (a rerun that redoes an item never
duplicates it) and ignores a torn last line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO


class Manifest:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line torn by a crash: that item is simply redone
                    if isinstance(entry, dict) and "id" in entry:
                        self.entries[entry["id"]] = entry

    def done(self, item_id: str, statuses: tuple[str, ...]) -> bool:
        entry = self.entries.get(item_id)
        return entry is not None and entry.get("status") in statuses

    def append(self, entry: dict[str, Any]) -> None:
        """Write and fsync one line. A torn last line (a full disk or a power cut mid-write) is ended first,
        else this entry would be glued onto it and lost with it when the file is read back."""
        data = (json.dumps(entry, sort_keys=True, default=_jsonable) + "\n").encode("utf-8")
        with open(self.path, "a+b") as f:
            if _ends_mid_line(f):
                data = b"\n" + data
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.entries[entry["id"]] = entry


def _ends_mid_line(f: BinaryIO) -> bool:
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return False
    f.seek(end - 1)
    return f.read(1) != b"\n"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
