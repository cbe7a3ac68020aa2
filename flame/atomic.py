"""Atomic file writes: readers (and a resumed batch run) see the old file or the new one, never half."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write to a fresh temporary name in the same folder, fsync, then `os.replace`.

    The temporary file is removed if anything fails. `os.open(..., 0o666)` lets the umask decide the
    permissions, as a plain `open` would (`mkstemp` would leave files private to the writer).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
