"""Atomic file writes: readers (and a resumed batch run) see the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file handle on a fresh temporary name in the same folder; on a clean exit it is fsynced
    and renamed onto `path` (`os.replace`), on an exception (or a crash) `path` is untouched.

    `os.open(..., 0o666)` lets the umask decide the permissions, as a plain `open` would (`mkstemp`
    would leave files private to the writer). Temporary names start with a dot and end in `.tmp`.
    A failure of the write itself (full disk, no permission, no such folder) is raised as an OSError of
    the same errno that names `path`, not the hidden temporary name (or no name, as a failed write has).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        if e.errno is None or e.filename not in (None, tmp, str(tmp)):
            raise  # the caller's own error (e.g. reading its input), not a failure to write `path`
        raise OSError(e.errno, e.strerror, str(path)) from e
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    """Remove a temporary file; quietly, so a folder that cannot be written hides no original error."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as handle:
        handle.write(data)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the hidden temporaries (`.<name>.<pid>.<random>.tmp`) a killed writer left in `folder`.

    Call it when a job starts, before its workers write: then no writer of this job is mid-file, and
    readers never saw these files anyway (they only ever see renamed, complete ones).
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed
