"""Ava-256 adapter: one record per tracked frame, read from the capture's zips in place (never extracted).

Why this shape: Ava-256 ships no raw scans, only tracked meshes (vertex-only PLYs in
``kinematic_tracking/registration_vertices.zip``) in head-local mm, whose faces come from the code
repo's ``assets/face_topology.obj`` (a path the caller gives). Vertices no face uses (eyeballs, mouth
interior) are kept, so indices stay those of the topology.

Frames and units (column vectors):
    head-local mm -> FLAME metres: x = v / 1000 (head-local axes are +y up, +z facing, like FLAME;
        unconfirmed on all captures, which is why landmarks come along to verify the orientation).
    head pose (``head_pose.zip``, <frame>.txt, 3x4): x_world = H[:, :3] v + H[:, 3], world mm. Used to bring
        the world-frame keypoints (``keypoints_3d.zip``, rows [id, x, y, z, conf, n_inliers]) and the cameras
        into head-local: v = H_R^T (x_world - H_t). Keypoint ids ``keypoint_ids`` (default 0..67) are the
        68 iBUG landmarks, in order; missing ids give NaN rows.
    cameras (``camera_calibration.json``): K and T stored transposed; x_cam[mm] = R x_world + t with
        [R | t] = (T^T)[:3]; in the scan frame R' = R H_R, t' = (R H_t + t) / 1000 (metres). K refers to
        4096 (H) x 2668 (W); it is scaled to the stored image size with u' + 0.5 = s (u + 0.5) per axis.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from p3dmm.flame.scan import (
    CameraView,
    ScanError,
    ScanGeometry,
    ScanRecord,
    check_geometry,
    check_head_size,
    read_member,
)

DATASET = "ava256"
CALIBRATION_SIZE = (4096, 2668)
"""(H, W) of the images the calibration's K refers to."""
DEFAULT_IMAGE_SIZE = (1024, 667)
"""(H, W) assumed for cameras without an image zip (the default 4 TB release)."""
IBUG_KEYPOINT_IDS = tuple(range(68))
"""keypoints_3d ids of the 68 iBUG points, in iBUG order (the synthetic layout's; unconfirmed for real data)."""
_MESH_ZIP = "kinematic_tracking/registration_vertices.zip"
_POSE_ZIP = "head_pose/head_pose.zip"
_KPT_ZIP = "keypoints_3d/keypoints_3d.zip"


# -- zip members -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _namelist(path: str, mtime: float) -> frozenset[str]:
    with zipfile.ZipFile(path) as zf:
        return frozenset(zf.namelist())


def zip_names(path: str | os.PathLike) -> frozenset[str]:
    """Member names of a zip (cached per file and mtime); empty when the zip is absent."""
    p = Path(path)
    if not p.is_file():
        return frozenset()
    try:
        return _namelist(str(p), p.stat().st_mtime)
    except (zipfile.BadZipFile, OSError) as err:
        raise ScanError(f"{path}: not a readable zip ({type(err).__name__}: {err})") from err


def _parse_ply_vertices(spec: str, data: bytes) -> np.ndarray:
    try:
        cloud = trimesh.load(io.BytesIO(data), file_type="ply", process=False)
        verts = np.asarray(cloud.vertices, dtype=np.float64)
    except Exception as err:  # trimesh raises many types for corrupt input; all mean "unreadable"
        raise ScanError(f"{spec}: cannot parse PLY ({type(err).__name__}: {' '.join(str(err).split())})") from err
    return verts


def _parse_pose(spec: str, data: bytes) -> np.ndarray:
    try:
        pose = np.array([[float(x) for x in line.split()] for line in data.decode("ascii").splitlines()
                         if line.strip()])
    except (UnicodeDecodeError, ValueError) as err:
        raise ScanError(f"{spec}: head pose is not a 3x4 text matrix ({err})") from err
    if pose.shape not in ((3, 4), (4, 4)) or not np.isfinite(pose).all():
        raise ScanError(f"{spec}: head pose must be a finite 3x4 matrix, got shape {pose.shape}")
    return pose[:3]


def _parse_keypoints(spec: str, data: bytes) -> np.ndarray:
    try:
        rows = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ScanError(f"{spec}: cannot read keypoints npy ({err})") from err
    if rows.ndim != 2 or rows.shape[1] < 4:
        raise ScanError(f"{spec}: keypoints must be (K, 6) [id, x, y, z, conf, n_inliers], got {rows.shape}")
    return rows.astype(np.float64)


# -- topology and calibration -------------------------------------------------------------------------


def parse_topology_obj(path: str, text: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(vertex count, faces (F, 3), per-corner uv (F, 3, 2)) from OBJ text; ``f v/vt[/vn]`` 1-based or negative.

    Own reader rather than the FLAME template reader: Ava-256's topology has vertices no face uses, which
    have no UV and must stay in place.
    """
    n_v, vt, faces, ft = 0, [], [], []
    try:
        for line in text.splitlines():
            head, _, rest = line.strip().partition(" ")
            if head == "v":
                n_v += 1
            elif head == "vt":
                vt.append([float(x) for x in rest.split()[:2]])
            elif head == "f":
                corners = [c.split("/") for c in rest.split()]
                if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                    raise ValueError(f"face {rest!r} is not a triangle with v/vt indices")
                idx = [[int(c[0]), int(c[1])] for c in corners]
                faces.append([i - 1 if i > 0 else n_v + i for i, _ in idx])
                ft.append([j - 1 if j > 0 else len(vt) + j for _, j in idx])
    except ValueError as err:
        raise ScanError(f"{path}: malformed OBJ ({err})") from err
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    t = np.asarray(ft, dtype=np.int64).reshape(-1, 3)
    uv = np.asarray(vt, dtype=np.float64).reshape(-1, 2)
    if n_v == 0 or len(f) == 0:
        raise ScanError(f"{path}: no vertices or faces in this topology OBJ")
    if f.min() < 0 or f.max() >= n_v or t.min() < 0 or t.max() >= len(uv):
        raise ScanError(f"{path}: face or UV index out of range ({n_v} v, {len(uv)} vt)")
    return n_v, f, uv[t]


@functools.lru_cache(maxsize=4)
def _topology(path: str, mtime: float) -> tuple[int, np.ndarray, np.ndarray]:
    try:
        text = Path(path).read_text(encoding="latin1")
    except OSError as err:
        raise ScanError(f"{path}: cannot read topology ({err})") from err
    return parse_topology_obj(path, text)


def read_topology(path: str | os.PathLike) -> tuple[int, np.ndarray, np.ndarray]:
    """(template vertex count, faces (F, 3) int64, per-corner uv (F, 3, 2)) of ``face_topology.obj``."""
    p = Path(path)
    if not p.is_file():
        raise ScanError(f"{path}: no such topology file (Ava-256's assets/face_topology.obj from the code repo)")
    return _topology(str(p), p.stat().st_mtime)


def read_calibration(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, tuple]]:
    """{cameraId: (K (3, 3) at CALIBRATION_SIZE, R (3, 3), t (3,) mm world->camera, distortion)}, transposes undone."""
    try:
        raw = json.loads(Path(path).read_text())
        out = {}
        for entry in raw["KRT"]:
            K = np.asarray(entry["K"], dtype=np.float64).T
            M = np.asarray(entry["T"], dtype=np.float64).T
            if K.shape != (3, 3) or M.shape[1] != 4 or M.shape[0] < 3:
                raise ValueError(f"camera {entry.get('cameraId')}: K {K.shape}, T {M.shape}")
            dist = tuple(float(d) for d in entry.get("distortion", ()))
            out[str(entry["cameraId"])] = (K, M[:3, :3], M[:3, 3], dist)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ScanError(f"{path}: cannot read camera calibration ({type(err).__name__}: {err})") from err
    return out


# -- records -----------------------------------------------------------------------------------------


def _captures(root: Path) -> list[Path]:
    """Capture folders (``<mcd>--<mct>--<SID>``) under root, or root itself if it is one."""
    if (root / "decoder").is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.count("--") == 2 and (p / "decoder").is_dir())


def _frame_list(path: Path) -> list[tuple[str, int]]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return [(row["seg_id"], int(row["frame_id"])) for row in rows]
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ScanError(f"{path}: cannot read frame list (seg_id,frame_id) ({type(err).__name__}: {err})") from err


def iter_records(
    root: str | os.PathLike,
    topology: str | os.PathLike,
    segments: Sequence[str] | None = None,
    every_nth: int = 1,
    keypoint_ids: Sequence[int] = IBUG_KEYPOINT_IDS,
) -> Iterator[ScanRecord]:
    """One record per listed frame of every capture under ``root`` (or ``root`` itself as one capture).

    Args:
        root: folder of ``<mcd>--<mct>--<SID>`` captures, each with ``decoder/``.
        topology: path of ``face_topology.obj`` (faces and UVs; Ava-256 keeps it outside the data).
        segments: keep only these seg_ids (e.g. ["EXP_neutral_peak"]); None keeps all.
        every_nth: keep every n-th listed frame of each capture (after the segment filter).
        keypoint_ids: keypoints_3d ids of the 68 iBUG landmarks, in iBUG order.

    Frames whose mesh or head pose is missing from the zips are skipped with a warning.
    """
    if every_nth < 1:
        raise ValueError(f"iter_records: every_nth must be >= 1, got {every_nth}")
    if len(keypoint_ids) != 68:
        raise ValueError(f"iter_records: keypoint_ids must list 68 ids (iBUG order), got {len(keypoint_ids)}")
    read_topology(topology)
    base = Path(root)
    if not base.is_dir():
        raise ScanError(f"{root}: not a folder (expected <mcd>--<mct>--<SID>/decoder/ captures)")
    wanted = None if segments is None else set(segments)
    for capture in _captures(base):
        decoder = capture / "decoder"
        sid = capture.name.split("--")[-1]
        frames = [f for f in _frame_list(decoder / "frame_list.csv") if wanted is None or f[0] in wanted]
        mesh_zip, pose_zip, kpt_zip = decoder / _MESH_ZIP, decoder / _POSE_ZIP, decoder / _KPT_ZIP
        meshes, poses, kpts = zip_names(mesh_zip), zip_names(pose_zip), zip_names(kpt_zip)
        for seg, frame in frames[::every_nth]:
            ply, txt, npy = f"{frame:06d}.ply", f"{frame:06d}.txt", f"{frame:06d}.npy"
            if ply not in meshes or txt not in poses:
                warnings.warn(f"{decoder}: frame {frame:06d} is listed but its mesh or head pose is missing; skipped",
                              stacklevel=2)
                continue
            yield ScanRecord(
                scan_id=f"{DATASET}/{sid}/{frame:06d}",
                dataset=DATASET,
                subject=sid,
                expression=seg,
                geometry=f"{mesh_zip}::{ply}",
                texture=None,
                to_flame_scale=0.001,
                extra={
                    "frame": frame,
                    "head_pose": f"{pose_zip}::{txt}",
                    "keypoints": f"{kpt_zip}::{npy}" if npy in kpts else None,
                    "calibration": str(decoder / "camera_calibration.json"),
                    "image_dir": str(decoder / "image"),
                    "topology": str(topology),
                    "keypoint_ids": list(keypoint_ids),
                },
            )


# -- loading -----------------------------------------------------------------------------------------


def load_scan(record: ScanRecord) -> ScanGeometry:
    """The tracked mesh of one frame in FLAME axes, metres (head-local mm / 1000), with topology faces,
    UVs, 68 landmarks from the world keypoints (via the inverse head pose) and the frame's cameras.

    Raises:
        ScanError: missing/corrupt zip member, topology or calibration file (the message starts with the
            path, ``zip::member`` for zip contents), vertex count not matching the topology, bad units.
    """
    extra = record.extra
    n_template, faces, uv = read_topology(extra["topology"])
    local_mm = _parse_ply_vertices(record.geometry, read_member(record.geometry))
    if len(local_mm) != n_template:
        raise ScanError(f"{record.geometry}: {len(local_mm)} vertices but topology {extra['topology']} has "
                        f"{n_template} (wrong topology file?)")
    check_geometry(record.geometry, local_mm, faces)
    verts = local_mm / 1000.0
    check_head_size(record.geometry, verts[np.unique(faces)])
    pose = _parse_pose(extra["head_pose"], read_member(extra["head_pose"]))
    H_R, H_t = pose[:, :3], pose[:, 3]
    landmarks = None
    if extra.get("keypoints"):
        rows = _parse_keypoints(extra["keypoints"], read_member(extra["keypoints"]))
        landmarks = _landmarks(rows, extra["keypoint_ids"], H_R, H_t)
    cameras = frame_cameras(extra["calibration"], extra["image_dir"], int(extra["frame"]), H_R, H_t)
    return ScanGeometry(record=record, vertices=verts, faces=faces, landmarks=landmarks, frame_known=True,
                        uv=uv, cameras=cameras)


def _landmarks(rows: np.ndarray, ids: Sequence[int], H_R: np.ndarray, H_t: np.ndarray) -> np.ndarray:
    """(68, 3) metres head-local: v = H_R^T (x_world - H_t) / 1000; NaN rows for absent ids."""
    by_id = {int(r[0]): r[1:4] for r in rows}
    world = np.array([by_id.get(int(i), (np.nan,) * 3) for i in ids], dtype=np.float64)
    return ((world - H_t) @ H_R) / 1000.0


@functools.lru_cache(maxsize=256)
def _image_size(zip_path: str, mtime: float) -> tuple[int, int] | None:
    """(H, W) of the first image in a camera zip (header only), None if it has none."""
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/"))
        if not names:
            return None
        with zf.open(names[0]) as fh, Image.open(fh) as im:
            return im.size[1], im.size[0]


def frame_cameras(calibration: str | os.PathLike, image_dir: str | os.PathLike, frame: int,
                  H_R: np.ndarray, H_t: np.ndarray) -> tuple[CameraView, ...]:
    """Every calibrated camera in the scan frame (head-local metres); K scaled to the camera's images
    (size from its ``image/cam<id>.zip``, else DEFAULT_IMAGE_SIZE). ``image`` is ``zip::member``."""
    views = []
    for cid, (K, R, t, dist) in read_calibration(calibration).items():
        zip_path = Path(image_dir) / f"cam{cid}.zip"
        size = None
        member = f"cam{cid}/{frame:06d}.avif"
        if zip_path.is_file():
            try:
                size = _image_size(str(zip_path), zip_path.stat().st_mtime)
            except (zipfile.BadZipFile, OSError) as err:
                raise ScanError(f"{zip_path}: cannot read image zip ({type(err).__name__}: {err})") from err
            names = zip_names(zip_path)
            member = next((n for n in sorted(names) if n.rsplit("/", 1)[-1].startswith(f"{frame:06d}.")), member)
        size = size or DEFAULT_IMAGE_SIZE
        sy, sx = size[0] / CALIBRATION_SIZE[0], size[1] / CALIBRATION_SIZE[1]
        Ks = K.copy()
        Ks[0, 0], Ks[1, 1] = K[0, 0] * sx, K[1, 1] * sy
        Ks[0, 2], Ks[1, 2] = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
        views.append(CameraView(image=f"{zip_path}::{member}", K=Ks, R=R @ H_R, t=(R @ H_t + t) / 1000.0,
                                distortion=dist, size=size))
    return tuple(views)
