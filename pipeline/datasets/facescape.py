"""FaceScape TU adapter: ``<root>/<id>/models_reg/<k>_<name>.obj`` in mm, +y up, face along +z.

Coordinates only need mm -> m (``frame_known=True``; an unknown translation remains). The scale is
FaceScape's inter-pupil normalisation, not true size, which registration must allow for. The OBJ is
read line by line so vertex ``i`` is the file's ``v`` line ``i`` (loaders that split vertices at UV
seams would break the landmark indices). Landmarks come from an index file (toolkit
``predef/landmark_indices.npz``, key ``v10``) passed as ``landmark_indices=``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from p3dmm.flame.scan import ScanError, ScanGeometry, ScanRecord, check_geometry, check_head_size

DATASET = "facescape"
TO_FLAME_SCALE = 0.001
_STEM = re.compile(r"^(\d+)_(\w+)$")


def iter_records(
    root: str | os.PathLike, landmark_indices: str | os.PathLike | None = None
) -> Iterator[ScanRecord]:
    """Records for every ``<id>/models_reg/<k>_<name>.obj``, ids numeric, then k numeric.

    Args:
        root: the TU root (holding the numeric subject folders; other names are skipped).
        landmark_indices: optional path of an ``.npz`` with key ``v10`` (68 vertex indices).
    """
    root = Path(root)
    if not root.is_dir():
        raise ScanError(f"{root}: FaceScape root is not a folder")
    subjects = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )
    for subject in subjects:
        models = subject / "models_reg"
        if not models.is_dir():
            continue
        stems = [(m, p) for p in models.glob("*.obj") if (m := _STEM.match(p.stem))]
        for match, obj in sorted(stems, key=lambda item: int(item[0].group(1))):
            jpg = obj.with_suffix(".jpg")
            extra = {"dpmap": str(subject / "dpmap" / f"{obj.stem}.png")}
            if landmark_indices is not None:
                extra["landmark_indices"] = str(landmark_indices)
            yield ScanRecord(
                scan_id=f"{DATASET}/{subject.name}/{obj.stem}",
                dataset=DATASET,
                subject=subject.name,
                expression=match.group(2),
                geometry=str(obj),
                texture=str(jpg) if jpg.is_file() else None,
                to_flame_scale=TO_FLAME_SCALE,
                extra=extra,
            )


def read_obj(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``v``, ``f`` and per-face-corner ``vt`` of an OBJ exactly in file order (polygons fan-triangulated).

    Returns:
        (V, 3) float64 in the file's units, (F, 3) int64 0-based, and (F, 3, 2) float64 UVs (OBJ
        convention, v up) when every face has texture indices, else None. Raises ScanError naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise ScanError(f"{path}: no such file")
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
        verts, texcoords, faces, face_vt = [], [], [], []
        for line in text.splitlines():
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("vt "):
                texcoords.append([float(x) for x in line.split()[1:3]])
            elif line.startswith("f "):
                corners = [tok.split("/") for tok in line.split()[1:]]
                idx = [int(c[0]) for c in corners]
                idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
                faces += [(idx[0], idx[k], idx[k + 1]) for k in range(1, len(idx) - 1)]
                if all(len(c) > 1 and c[1] for c in corners):
                    tdx = [int(c[1]) for c in corners]
                    tdx = [i - 1 if i > 0 else len(texcoords) + i for i in tdx]
                    face_vt += [(tdx[0], tdx[k], tdx[k + 1]) for k in range(1, len(tdx) - 1)]
        vertices = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
        face_uv = None
        if texcoords and len(face_vt) == len(faces):
            face_uv = np.asarray(texcoords, dtype=np.float64)[np.asarray(face_vt, dtype=np.int64)]
    except (OSError, ValueError, IndexError) as err:
        raise ScanError(
            f"{path}: cannot read OBJ ({type(err).__name__}: {' '.join(str(err).split())})"
        ) from err
    return vertices, np.asarray(faces, dtype=np.int64).reshape(-1, 3), face_uv


def read_landmark_indices(path: str | os.PathLike, n_vertices: int) -> np.ndarray:
    """(68,) int64 vertex indices from ``path`` (key ``v10``), checked against ``n_vertices``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            idx = np.asarray(data["v10"]).reshape(-1)
    except (OSError, KeyError, ValueError) as err:
        raise ScanError(
            f"{path}: cannot read landmark indices key 'v10' ({type(err).__name__}: {err})"
        ) from err
    if len(idx) != 68 or not np.issubdtype(idx.dtype, np.integer):
        raise ScanError(f"{path}: expected 68 integer indices in 'v10', got {idx.dtype} {idx.shape}")
    if idx.min() < 0 or idx.max() >= n_vertices:
        raise ScanError(f"{path}: landmark indices outside [0, {n_vertices}) of the TU mesh")
    return idx.astype(np.int64)


def load_scan(record: ScanRecord) -> ScanGeometry:
    """The TU mesh in metres (mm / 1000), FLAME axes, its UVs, and its 68 landmarks when an index file is set."""
    vertices, faces, face_uv = read_obj(record.geometry)
    check_geometry(record.geometry, vertices, faces)
    vertices = vertices * (record.to_flame_scale if record.to_flame_scale is not None else TO_FLAME_SCALE)
    check_head_size(record.geometry, vertices)
    landmarks = None
    if record.extra.get("landmark_indices"):
        landmarks = vertices[read_landmark_indices(record.extra["landmark_indices"], len(vertices))]
    return ScanGeometry(record=record, vertices=vertices, faces=faces, landmarks=landmarks, frame_known=True,
                        metric=False, uv=face_uv)  # IPD-normalised, not true size
