"""The registration file, `<register out>/registered/<name>.npz`: one registered scan; its one writer and reader.

Stored keys (unchanged since the first version, so every existing output reads): scan_id; vertices (V, 3)
float64 in the SCAN frame; accepted; reason ("" when accepted); and JSON strings params (the FLAME
parameters with "scale", "rotation", "similarity_translation": the similarity FLAME -> scan frame,
y = s x R^T + t), metrics and record (the ScanRecord). Readers get the vertices in the FLAME frame, the frame
every later stage works in (render targets and cameras, fitting truth), with the similarity back to the scan.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.rotations import head_rotation
from p3dmm.flame.scan import ScanRecord
from p3dmm.flame.similarity import Similarity

KEYS = ("scan_id", "vertices", "accepted", "reason", "params", "metrics", "record")
HEADER_KEYS = ("scan_id", "accepted", "record")


def output_name(scan_id: str) -> str:
    """File stem of a scan's registration: the scan id with "/" made safe for a file name."""
    return scan_id.replace("/", "__")


@dataclass(frozen=True)
class RegisteredHeader:
    """What listing registrations needs, read without decompressing the vertices."""

    scan_id: str
    record: ScanRecord
    accepted: bool


@dataclass(frozen=True)
class Registered:
    """A registration in the FLAME frame, with the similarity back to its scan's frame."""

    scan_id: str
    vertices: np.ndarray  # (V, 3) float64 FLAME metres: FLAME(params) + offsets
    to_scan: Similarity  # FLAME frame -> scan frame
    head_rotation: np.ndarray  # (3, 3) global @ neck rotation of params["pose"]
    params: dict
    metrics: dict
    record: ScanRecord
    accepted: bool
    reason: str  # "" when accepted

    @property
    def scan_vertices(self) -> np.ndarray:
        """(V, 3) the registration in the scan's frame and units, where the scan and its truth are."""
        return self.to_scan.apply(self.vertices)


def write_registered(path: str | os.PathLike, record: ScanRecord, vertices: np.ndarray, *, accepted: bool,
                     reason: str | None, params: dict, metrics: dict) -> None:
    """Write one registration atomically (a reader or a resumed run sees the old file or the new one, never
    half); `vertices` are in the scan's frame, as registration returns them."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        scan_id=record.scan_id,
        vertices=np.asarray(vertices, dtype=np.float64),
        accepted=bool(accepted),
        reason=str(reason or ""),
        params=json.dumps(params, default=_jsonable),
        metrics=json.dumps(metrics, default=_jsonable),
        record=json.dumps(asdict(record), default=_jsonable),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())


def _jsonable(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def read_header(path: str | os.PathLike) -> RegisteredHeader:
    """scan id, record and verdict of a registration file (for planning over many files)."""
    fields = _fields(path, HEADER_KEYS)
    try:
        return RegisteredHeader(scan_id=str(fields["scan_id"]), record=_record(fields),
                                accepted=bool(fields["accepted"]))
    except (ValueError, TypeError, KeyError) as e:
        raise _malformed(path, e) from e


def load_registered(path: str | os.PathLike) -> Registered:
    """The registration in the FLAME frame; ValueError naming the file when it is not one."""
    fields = _fields(path, KEYS)
    try:
        vertices = np.asarray(fields["vertices"])
        if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.issubdtype(vertices.dtype, np.number):
            raise ValueError(f"vertices are {vertices.dtype} {vertices.shape}, not (V, 3) numbers")
        params = _json_object(fields, "params")
        to_scan = _similarity(params)
        return Registered(
            scan_id=str(fields["scan_id"]),
            vertices=to_scan.invert_points(vertices.astype(np.float64)),
            to_scan=to_scan,
            head_rotation=head_rotation(torch.tensor(params["pose"], dtype=torch.float64)).numpy(),
            params=params,
            metrics=_json_object(fields, "metrics"),
            record=_record(fields),
            accepted=bool(fields["accepted"]),
            reason=str(fields["reason"]),
        )
    except (ValueError, TypeError, KeyError) as e:
        raise _malformed(path, e) from e


def _fields(path: str | os.PathLike, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of the file, without pickles; a file that is no registration npz is a ValueError."""
    try:
        with open(path, "rb") as handle:
            if not zipfile.is_zipfile(handle):  # checked first, so np.load never guesses at a pickle
                raise ValueError("not an .npz archive")
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as data:
                missing = [k for k in keys if k not in data.files]
                if missing:
                    raise ValueError(f"no {', '.join(missing)}")
                return {k: data[k] for k in keys}
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # I/O errors stay what they are
        raise _malformed(path, e) from e


def _json_object(fields: dict[str, np.ndarray], key: str) -> dict:
    try:
        value = json.loads(str(fields[key]))
    except json.JSONDecodeError as e:
        raise ValueError(f"{key}: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{key} is not a JSON object")
    return value


def _record(fields: dict[str, np.ndarray]) -> ScanRecord:
    return ScanRecord(**_json_object(fields, "record"))


def _similarity(params: dict) -> Similarity:
    """The FLAME -> scan similarity stored in the params (y = s x R^T + t)."""
    scale = float(params["scale"])
    rotation = np.asarray(params["rotation"], np.float64)
    translation = np.asarray(params["similarity_translation"], np.float64)
    if not (np.isfinite(scale) and scale > 0) or rotation.shape != (3, 3) or translation.shape != (3,):
        raise ValueError(f"bad similarity (scale {scale}, rotation {rotation.shape}, translation {translation.shape})")
    return Similarity(scale, rotation, translation)


def _malformed(path: str | os.PathLike, error: Exception) -> ValueError:
    detail = f"no key {error.args[0]!r}" if isinstance(error, KeyError) else " ".join(str(error).split())
    return ValueError(f"{path}: not a registration file ({detail})")
