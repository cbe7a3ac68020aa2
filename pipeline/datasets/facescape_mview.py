"""FaceScape multi-view adapter: raw MVS meshes (``<id>/<k>_<name>.ply``) with their calibrated photos.

Why a separate layout from the TU models: the MVS meshes are the raw-like input (noise, holes, clutter)
but each tuple lives in its own SfM frame of arbitrary scale and orientation (coordinates ~0..7).
``Rt_scale_dict.json`` from the FaceScape toolkit maps it to the TU frame (mm, y up, +z face):
x_tu = R (s x_sfm) + t. With it, scans come out in metres with FLAME's axes (``frame_known=True``);
without it (or for a tuple it lacks) they come out in the SfM frame as stored (``frame_known=False``),
and registration must initialise robustly.

Cameras (params.json, flat keys per view v): ``{v}_K`` 4x4 with the intrinsics top-left,
``{v}_Rt`` 3x4 world(SfM) -> camera, OpenCV axes; ``{v}_distortion`` (k1, k2, p1, p2, k3) of the stored
photo; ``{v}_width``/``{v}_height``; views with ``{v}_valid`` False are skipped. They are converted to
the frame of the returned vertices: with the dict, x_cam[m] = R R_s^T x + (s t - R R_s^T t_s) / 1000.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from p3dmm.flame.mesh import MeshError, load_mesh
from p3dmm.flame.scan import CameraView, ScanError, ScanGeometry, ScanRecord, check_geometry, check_head_size

DATASET = "facescape-mview"
_TUPLE = re.compile(r"^(\d+)_([A-Za-z_]+)\.ply$")


def _dataset_dir(root: Path) -> Path:
    """``root`` itself or its ``fsmview_trainset/`` child (both archives extract under that name)."""
    child = root / "fsmview_trainset"
    return child if child.is_dir() else root


def read_rt_scale_dict(path: str | os.PathLike) -> dict[str, dict[str, tuple[float, list]]]:
    """Parse ``Rt_scale_dict.json`` ({id: {k: [scale, Rt 3x4]}}); ScanError naming the file if unusable."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ScanError(f"{path}: cannot read Rt_scale_dict ({type(err).__name__}: {err})") from err
    if not isinstance(raw, dict):
        raise ScanError(f"{path}: expected a JSON object {{id: {{k: [scale, Rt]}}}}, got {type(raw).__name__}")
    out: dict[str, dict[str, tuple[float, list]]] = {}
    for sid, per_k in raw.items():
        if not isinstance(per_k, dict):
            raise ScanError(f"{path}: entry {sid!r} must map expression k to [scale, Rt]")
        for k, value in per_k.items():
            try:
                scale, rt = float(value[0]), np.asarray(value[1], dtype=np.float64)
            except (TypeError, ValueError, IndexError) as err:
                raise ScanError(f"{path}: entry [{sid!r}][{k!r}] is not [scale, Rt 3x4]") from err
            if rt.shape != (3, 4) or not np.isfinite(rt).all() or not np.isfinite(scale) or scale <= 0:
                raise ScanError(f"{path}: entry [{sid!r}][{k!r}] needs scale > 0 and a finite 3x4 Rt")
            out.setdefault(str(sid), {})[str(k)] = (scale, rt.tolist())
    return out


def iter_records(
    root: str | os.PathLike,
    rt_scale_dict: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
) -> Iterator[ScanRecord]:
    """One record per ``<id>/<k>_<name>.ply`` under ``root`` (or ``root/fsmview_trainset``), sorted by id, k.

    Args:
        root: the folder holding the numeric subject folders (or their ``fsmview_trainset`` parent).
        rt_scale_dict: optional path of the toolkit's ``Rt_scale_dict.json``; the record carries its
            (scale, Rt) entry so workers need not re-read the file.
        image_root: where ``<id>/<k>_<name>/params.json`` and the photos are, if the image archives were
            extracted elsewhere than the meshes (default: ``root``). Tuples without params.json get no cameras.

    Yields:
        ScanRecord(scan_id "facescape-mview/<id>/<k>_<name>", geometry = the .ply, extra: params (path of
        params.json or None), image_dir, sim ([scale, Rt] or None)). Non-numeric folders are ignored.
    """
    base = _dataset_dir(Path(root))
    if not base.is_dir():
        raise ScanError(f"{root}: not a folder (expected FaceScape fsmview_trainset/<id>/<k>_<name>.ply)")
    images = base if image_root is None else _dataset_dir(Path(image_root))
    sims = read_rt_scale_dict(rt_scale_dict) if rt_scale_dict is not None else None
    subjects = sorted((p for p in base.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for subject in subjects:
        tuples = sorted(
            (m for m in (_TUPLE.match(p.name) for p in subject.iterdir()) if m), key=lambda m: int(m.group(1))
        )
        for match in tuples:
            name = match.group(0)[: -len(".ply")]
            k = match.group(1)
            sim = None
            if sims is not None:
                sim = sims.get(subject.name, {}).get(k)
                if sim is None:
                    warnings.warn(f"{rt_scale_dict}: no entry for {subject.name}/{k}; that scan keeps its SfM frame",
                                  stacklevel=2)
            image_dir = images / subject.name / name
            params = image_dir / "params.json"
            yield ScanRecord(
                scan_id=f"{DATASET}/{subject.name}/{name}",
                dataset=DATASET,
                subject=subject.name,
                expression=name,
                geometry=str(subject / match.group(0)),
                texture=None,
                to_flame_scale=None,
                extra={
                    "params": str(params) if params.is_file() else None,
                    "image_dir": str(image_dir),
                    "sim": None if sim is None else [sim[0], sim[1]],
                },
            )


def load_scan(record: ScanRecord) -> ScanGeometry:
    """Read the MVS mesh and its valid cameras, in metres/FLAME axes when the record has an Rt_scale entry
    (``frame_known=True``), else in the SfM frame as stored (``frame_known=False``, cameras in SfM units).

    Raises:
        ScanError: unreadable mesh or params.json (message starts with the path), implausible head size.
    """
    try:
        verts, faces = load_mesh(record.geometry)
    except MeshError as err:
        raise ScanError(str(err)) from err
    check_geometry(record.geometry, verts, faces)
    sim = record.extra.get("sim")
    if sim is not None:
        scale, rt = float(sim[0]), np.asarray(sim[1], dtype=np.float64)
        rot, trans = rt[:, :3], rt[:, 3]
        verts = (scale * verts @ rot.T + trans) / 1000.0
        check_head_size(record.geometry, verts)
    cameras = ()
    if record.extra.get("params"):
        cameras = read_cameras(record.extra["params"], record.extra["image_dir"], sim)
    return ScanGeometry(record=record, vertices=verts, faces=faces, landmarks=None,
                        frame_known=sim is not None, metric=False, cameras=cameras)  # TU frame: IPD-scaled


def read_cameras(params_path: str | os.PathLike, image_dir: str | os.PathLike,
                 sim: list | None = None) -> tuple[CameraView, ...]:
    """Valid views of ``params.json`` as CameraView, in the SfM frame or (with ``sim`` = [s, Rt]) in
    metres/FLAME axes: R' = R R_s^T, t' = (s t - R' t_s) / 1000, since x_sfm = R_s^T (1000 x - t_s) / s
    and a camera frame may be rescaled without changing the projection."""
    try:
        params = json.loads(Path(params_path).read_text())
    except (OSError, ValueError) as err:
        raise ScanError(f"{params_path}: cannot read camera params ({type(err).__name__}: {err})") from err
    view_ids = sorted({int(key[:-2]) for key in params if key.endswith("_K") and key[:-2].isdigit()})
    views = []
    for v in view_ids:
        if str(params.get(f"{v}_valid", True)).strip().lower() in ("false", "0", "no"):
            continue
        try:
            K = np.asarray(params[f"{v}_K"], dtype=np.float64)[:3, :3]
            rt = np.asarray(params[f"{v}_Rt"], dtype=np.float64)
            dist = tuple(float(d) for d in params.get(f"{v}_distortion", ()))
            size = (int(params[f"{v}_height"]), int(params[f"{v}_width"]))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ScanError(f"{params_path}: view {v} has missing or malformed keys ({err})") from err
        if K.shape != (3, 3) or rt.shape != (3, 4) or not (np.isfinite(K).all() and np.isfinite(rt).all()):
            raise ScanError(f"{params_path}: view {v} needs a 3x3 (or 4x4) K and a finite 3x4 Rt")
        R, t = rt[:, :3], rt[:, 3]
        if sim is not None:
            scale, srt = float(sim[0]), np.asarray(sim[1], dtype=np.float64)
            R = R @ srt[:, :3].T
            t = (scale * t - R @ srt[:, 3]) / 1000.0
        views.append(CameraView(image=str(Path(image_dir) / f"{v}.jpg"), K=K, R=R, t=t, distortion=dist, size=size))
    return tuple(views)
