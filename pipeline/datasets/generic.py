"""Generic adapter: a folder (searched recursively) of ``.ply`` / ``.obj`` meshes or point clouds.

For users' own scans. Files are assumed in metres and FLAME's axes (``scale=`` converts other units,
``frame_known=False`` tells registration the orientation is arbitrary). Optional landmarks sit beside
a scan as ``<name>.lmk.npy``: (68, 3) float in the scan's units, iBUG order, NaN rows for missing
points. Folders and files whose names start with ``_`` or ``.`` (e.g. ``_truth``) are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import trimesh

from p3dmm.flame.mesh import require_file
from p3dmm.flame.scan import ScanError, ScanGeometry, ScanRecord, check_geometry, check_head_size

DATASET = "generic"
SUFFIXES = (".ply", ".obj")
LANDMARK_SUFFIX = ".lmk.npy"


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(("_", ".")) for part in path.relative_to(root).parts)


def iter_records(
    root: str | os.PathLike, scale: float = 1.0, frame_known: bool = True
) -> Iterator[ScanRecord]:
    """One record per mesh / point-cloud file, sorted by relative path; id ``generic/<relative stem>``.

    Args:
        scale: metres per stored unit (1.0 metres, 0.001 millimetres).
        frame_known: whether files are in FLAME's axes (+y up, face along +z).

    Two files differing only in suffix keep the suffix in their ids (``generic/a.ply``, ``generic/a.obj``).
    """
    root = Path(root)
    if not root.is_dir():
        raise ScanError(f"{root}: generic root is not a folder")
    if not scale > 0:
        raise ValueError(f"generic.iter_records: scale must be > 0 (metres per unit), got {scale}")
    files = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file() and _visible(p, root)
    )
    stems = [p.relative_to(root).with_suffix("").as_posix() for p in files]
    for path, stem in zip(files, stems, strict=True):
        name = stem if stems.count(stem) == 1 else path.relative_to(root).as_posix()
        lmk = path.with_name(path.stem + LANDMARK_SUFFIX)
        extra: dict = {"frame_known": frame_known}
        if lmk.is_file():
            extra["landmarks"] = str(lmk)
        yield ScanRecord(
            scan_id=f"{DATASET}/{name}",
            dataset=DATASET,
            subject=name,
            expression="",
            geometry=str(path),
            to_flame_scale=scale,
            extra=extra,
        )


def read_mesh_or_points(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """(V, 3) float64 vertices in file order and (F, 3) int64 faces, or None for a point cloud."""
    p = require_file(path, ScanError)
    try:
        loaded = trimesh.load(str(p), process=False, maintain_order=True)
        if isinstance(loaded, trimesh.Scene):
            loaded = loaded.to_mesh() if loaded.geometry else None
    except Exception as err:  # trimesh raises many types for corrupt input; all mean "unreadable"
        raise ScanError(f"{path}: cannot read ({type(err).__name__}: {' '.join(str(err).split())})") from err
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64).reshape(-1, 3)
    faces = getattr(loaded, "faces", None)
    if isinstance(loaded, trimesh.PointCloud) or faces is None:
        return vertices, None
    return vertices, np.asarray(faces, dtype=np.int64).reshape(-1, 3)


def read_landmarks(path: str | os.PathLike) -> np.ndarray:
    """(68, 3) float64 from a ``.lmk.npy`` (no pickles); NaN rows allowed, infinities refused."""
    try:
        lmk = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ScanError(f"{path}: cannot read landmarks ({type(err).__name__}: {err})") from err
    if lmk.shape != (68, 3) or not np.issubdtype(lmk.dtype, np.number):
        raise ScanError(f"{path}: landmarks must be (68, 3) numbers, got {lmk.dtype} {lmk.shape}")
    lmk = lmk.astype(np.float64)
    if np.isinf(lmk).any():
        raise ScanError(f"{path}: landmarks contain infinite values")
    return lmk


def load_scan(record: ScanRecord) -> ScanGeometry:
    """The mesh or point cloud (faces None) and its landmarks, scaled to metres."""
    vertices, faces = read_mesh_or_points(record.geometry)
    check_geometry(record.geometry, vertices, faces)
    scale = record.to_flame_scale if record.to_flame_scale is not None else 1.0
    vertices = vertices * scale
    check_head_size(record.geometry, vertices)
    landmarks = None
    if record.extra.get("landmarks"):
        landmarks = read_landmarks(record.extra["landmarks"]) * scale
    return ScanGeometry(
        record=record,
        vertices=vertices,
        faces=faces,
        landmarks=landmarks,
        frame_known=bool(record.extra.get("frame_known", True)),
    )
