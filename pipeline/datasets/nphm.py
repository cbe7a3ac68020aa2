"""NPHM adapter: ``<root>/<sid:03d>/<eid:03d>/scan.ply`` in NPHM space (FLAME frame x 4).

The conversion is exact (author, NPHM issue #18): ``x_flame = x / 4``, same axes and origin, so the
scan comes out with ``frame_known=True``. Landmarks are not shipped as files, so none are returned.
``flame.ply`` (NPHM's FLAME fit, same NPHM space) is listed in ``record.extra`` and, when present, read
into ``ScanGeometry.init_vertices`` with the scan's own conversion, so ``--init dataset`` can start the
registration from it. Its vertex count is checked by registration (only it knows the FLAME model).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import trimesh

from p3dmm.flame.mesh import require_file
from p3dmm.flame.scan import ScanError, ScanGeometry, ScanRecord, check_geometry, check_head_size

DATASET = "nphm"
TO_FLAME_SCALE = 0.25
_SIDECARS = ("flame.ply", "registration.ply", "s.npy", "R.npy", "t.npy")


def _numeric_dirs(folder: Path) -> list[Path]:
    """Sub-folders whose names are integers, in numeric order (others, e.g. ``_truth``, are skipped)."""
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found, key=lambda p: int(p.name))


def _texture_name(ply: Path) -> str | None:
    """The ``comment TextureFile <name>`` of a PLY header (reads at most 64 KiB), or None."""
    try:
        with open(ply, "rb") as handle:
            head = handle.read(65536)
    except OSError:
        return None
    for line in head.split(b"end_header")[0].splitlines():
        parts = line.decode("latin1").split(None, 2)
        if len(parts) == 3 and parts[0] == "comment" and parts[1] == "TextureFile":
            return parts[2].strip()
    return None


def iter_records(root: str | os.PathLike) -> Iterator[ScanRecord]:
    """One record per ``<sid>/<eid>`` folder, sorted numerically; ids ``nphm/<sid>/<eid>``.

    A folder without scan.ply still yields a record, so the batch run reports it as missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise ScanError(f"{root}: NPHM root is not a folder")
    for subject in _numeric_dirs(root):
        for expr in _numeric_dirs(subject):
            scan = expr / "scan.ply"
            name = _texture_name(scan) if scan.is_file() else None
            texture = str(expr / name) if name and (expr / name).is_file() else None
            extra = {key.split(".")[0]: str(expr / key) for key in _SIDECARS if (expr / key).is_file()}
            yield ScanRecord(
                scan_id=f"{DATASET}/{subject.name}/{expr.name}",
                dataset=DATASET,
                subject=subject.name,
                expression=expr.name,
                geometry=str(scan),
                texture=texture,
                to_flame_scale=TO_FLAME_SCALE,
                extra=extra,
            )


def read_textured_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Vertices, faces and per-face-corner UVs of a PLY, errors as ScanError naming the file.

    Vertices are split only where per-face texcoords differ at a shared vertex (trimesh's unmerge);
    the surface is the stored one. The texture image is not decoded here.

    Returns:
        (V, 3) float64 in the file's units, (F, 3) int64, (F, 3, 2) float64 UVs or None.
    """
    p = require_file(path, ScanError)
    try:
        with open(p, "rb") as handle:  # a file object: trimesh does not go looking for the texture
            mesh = trimesh.load(handle, file_type="ply", process=False)
    except Exception as err:  # trimesh raises many types for corrupt input; all mean "unreadable"
        raise ScanError(
            f"{path}: cannot read PLY ({type(err).__name__}: {' '.join(str(err).split())})"
        ) from err
    vertices = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))), dtype=np.float64)
    faces = getattr(mesh, "faces", None)
    faces = np.zeros((0, 3), np.int64) if faces is None else np.asarray(faces, dtype=np.int64)
    uv = getattr(getattr(mesh, "visual", None), "uv", None)
    face_uv = None
    if uv is not None and len(uv) == len(vertices) and faces.ndim == 2 and len(faces):
        face_uv = np.asarray(uv, dtype=np.float64)[faces]
    return vertices, faces.reshape(-1, 3), face_uv


def _to_flame(record: ScanRecord, vertices: np.ndarray) -> np.ndarray:
    """NPHM space to FLAME metres: the one conversion, shared by the scan and its FLAME fit."""
    return vertices * (record.to_flame_scale if record.to_flame_scale is not None else TO_FLAME_SCALE)


def read_flame_fit(record: ScanRecord) -> np.ndarray | None:
    """(V, 3) float64 metres of the shipped ``flame.ply`` in the scan's frame, or None when there is none.

    A corrupt, empty or non-finite file is a ScanError naming it, as for the scan itself: a fit that
    cannot be read is not silently replaced by the template start.
    """
    path = record.extra.get("flame")
    if path is None:
        return None
    vertices, _, _ = read_textured_ply(path)
    check_geometry(path, vertices, None)
    return _to_flame(record, vertices)


def load_scan(record: ScanRecord) -> ScanGeometry:
    """Read scan.ply and divide by 4: (P, 3) metres in FLAME's frame, faces, per-corner UVs, and the
    shipped FLAME fit (``flame.ply``, same conversion) as ``init_vertices`` when the folder has one."""
    vertices, faces, face_uv = read_textured_ply(record.geometry)
    check_geometry(record.geometry, vertices, faces)
    vertices = _to_flame(record, vertices)
    check_head_size(record.geometry, vertices)
    return ScanGeometry(record=record, vertices=vertices, faces=faces, frame_known=True, uv=face_uv,
                        init_vertices=read_flame_fit(record))
