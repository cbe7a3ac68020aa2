"""FaceScape multi-view and Ava-256 adapters on tiny synthetic datasets in the real layouts."""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy.ndimage import binary_dilation, map_coordinates
from scipy.spatial import cKDTree

from p3dmm.flame.cameras import Cameras, project
from p3dmm.flame.files import load_assets
from p3dmm.flame.render import raycast
from p3dmm.flame.scan import CameraView, ScanError
from p3dmm.flame.synth import write_synthetic_flame
from p3dmm.pipeline.datasets import ava256, facescape_mview
from p3dmm.pipeline.render.photos import distort_points
from p3dmm.pipeline.synth.ava256 import write_ava256
from p3dmm.pipeline.synth.facescape_mview import BACKGROUND, write_facescape_mview
from p3dmm.pipeline.synth.scans import read_truth

SID = "BDF920"


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("flame")
    write_synthetic_flame(folder, n_vertices=1000, seed=0)
    return load_assets(folder)


@pytest.fixture(scope="module")
def mview_root(assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fsmview")
    write_facescape_mview(root, assets, subjects=[7], expressions=[1, 2], seed=1, views=4, image_size=(120, 160))
    return root


@pytest.fixture(scope="module")
def ava_root(assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ava")
    write_ava256(root, assets, subjects=[SID], frames=2, seed=2, cameras=2, image_downscale=16)
    return root


def _surface_distance(assets, truth_vertices: np.ndarray, points: np.ndarray) -> np.ndarray:
    mesh = trimesh.Trimesh(truth_vertices, assets.model.faces, process=False)
    return trimesh.proximity.closest_point(mesh, points)[1]


def _undistorted_photo(view: CameraView, image: np.ndarray) -> np.ndarray:
    """Resample a stored (distorted) photo to the pinhole image of ``view.K``: pixel p samples distort(p)."""
    height, width = image.shape[:2]
    K = view.K
    jj, ii = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    xy = np.stack([(jj.ravel() - K[0, 2]) / K[0, 0], (ii.ravel() - K[1, 2]) / K[1, 1]], axis=1)
    xy_d = distort_points(xy, view.distortion) if view.distortion else xy
    rows, cols = xy_d[:, 1] * K[1, 1] + K[1, 2], xy_d[:, 0] * K[0, 0] + K[0, 2]
    out = np.stack([map_coordinates(image[..., c].astype(float), [rows, cols], order=1, cval=BACKGROUND[c])
                    for c in range(3)], axis=-1)
    return out.reshape(height, width, 3)


def _foreground(image: np.ndarray) -> np.ndarray:
    return np.abs(image.astype(float) - np.asarray(BACKGROUND, float)).max(axis=-1) > 60


def _check_camera(view: CameraView, image: np.ndarray, truth_vertices: np.ndarray, faces: np.ndarray) -> None:
    """Truth vertices project onto the photo's foreground, and a re-render's silhouette matches it."""
    assert image.shape[:2] == view.size
    fg = _foreground(_undistorted_photo(view, image))
    cams = Cameras(K=torch.as_tensor(view.K)[None], R=torch.as_tensor(view.R)[None],
                   t=torch.as_tensor(view.t)[None], image_size=view.size)
    uv, depth = project(torch.as_tensor(truth_vertices)[None], cams)
    uv = np.rint(uv[0].numpy()).astype(int)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < view.size[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < view.size[0])
    assert (depth[0].numpy() > 0).all() and inside.mean() > 0.95
    # silhouette vertices may round one pixel out at these tiny sizes
    assert binary_dilation(fg)[uv[inside, 1], uv[inside, 0]].mean() > 0.97
    mask = raycast(truth_vertices, faces, cams).mask
    iou = (mask & fg).sum() / (mask | fg).sum()
    assert iou > 0.9, iou


# -- FaceScape multi-view ---------------------------------------------------------------------------


def test_mview_records_and_geometry_with_rt_scale(assets, mview_root: Path) -> None:
    records = list(facescape_mview.iter_records(mview_root, mview_root / "Rt_scale_dict.json"))
    assert [r.scan_id for r in records] == ["facescape-mview/7/1_neutral", "facescape-mview/7/2_smile"]
    for record in records:
        scan = facescape_mview.load_scan(record)
        truth = read_truth(mview_root, record.scan_id)
        assert scan.frame_known and scan.landmarks is None
        dist_mm = _surface_distance(assets, truth["vertices"], scan.vertices) * 1000 * float(truth["metres_per_unit"])
        assert np.median(dist_mm) < 1.5 and np.percentile(dist_mm, 80) < 3.0  # noise ~0.5 mm, clutter is the rest
        # the scan covers the face: most face vertices have a scan point within 3 mm
        face = assets.masks["face"]
        gap_mm = cKDTree(scan.vertices).query(truth["vertices"][face])[0] * 1000
        assert np.mean(gap_mm < 3.0) > 0.8
        assert len(scan.cameras) == 3  # 4 views, one marked invalid
        assert all(Path(v.image).name != "1.jpg" for v in scan.cameras)
        for view in scan.cameras:
            assert len(view.distortion) == 5
            _check_camera(view, np.asarray(Image.open(view.image)), truth["vertices"], assets.model.faces)


def test_mview_without_rt_scale_keeps_sfm_frame(assets, mview_root: Path) -> None:
    record = next(iter(facescape_mview.iter_records(mview_root / "fsmview_trainset")))
    scan = facescape_mview.load_scan(record)
    assert not scan.frame_known
    assert np.ptp(scan.vertices, axis=0).max() < 15 and scan.vertices.min() > -5  # SfM units, ~0..10
    sim = json.loads((mview_root / "Rt_scale_dict.json").read_text())["7"]["1"]
    scale, rt = sim[0], np.asarray(sim[1])
    truth = read_truth(mview_root, record.scan_id)
    sfm_truth = ((truth["vertices"] * 1000 - rt[:, 3]) @ rt[:, :3]) / scale
    gap = _surface_distance(assets, sfm_truth, scan.vertices) * scale  # mm
    assert np.median(gap) < 1.5
    view = scan.cameras[0]  # cameras stay rigid in SfM units
    _check_camera(view, np.asarray(Image.open(view.image)), sfm_truth, assets.model.faces)


def test_mview_errors(mview_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "Rt.json"
    bad.write_text("{not json")
    with pytest.raises(ScanError, match=re.escape(str(bad))):
        list(facescape_mview.iter_records(mview_root, bad))
    copy = tmp_path / "fs"
    shutil.copytree(mview_root / "fsmview_trainset", copy)
    (copy / "7" / "1_neutral.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\n1 2")
    record = next(iter(facescape_mview.iter_records(copy)))
    with pytest.raises(ScanError, match=r"1_neutral\.ply"):
        facescape_mview.load_scan(record)


# -- Ava-256 ------------------------------------------------------------------------------------------


def _ava_records(root: Path, **kwargs) -> list:
    with pytest.warns(UserWarning, match="000105 is listed but"):
        return list(ava256.iter_records(root, topology=root / "assets" / "face_topology.obj", **kwargs))


def test_ava_records_skip_missing_frame(ava_root: Path) -> None:
    records = _ava_records(ava_root)
    assert [r.scan_id for r in records] == [f"ava256/{SID}/000100", f"ava256/{SID}/000110"]
    assert records[0].geometry.endswith("registration_vertices.zip::000100.ply")
    assert [r.scan_id for r in _ava_records(ava_root, segments=["EXP_free_face"])] == [f"ava256/{SID}/000110"]
    strided = ava256.iter_records(ava_root, ava_root / "assets" / "face_topology.obj", every_nth=2)
    assert [r.extra["frame"] for r in strided] == [100, 110]  # the missing 105 falls between


def test_ava_geometry_landmarks_cameras(assets, ava_root: Path) -> None:
    for record in _ava_records(ava_root):
        scan = ava256.load_scan(record)
        truth = read_truth(ava_root, record.scan_id)
        assert scan.frame_known and scan.uv is not None and scan.uv.shape == (len(scan.faces), 3, 2)
        unused = np.setdiff1d(np.arange(len(scan.vertices)), scan.faces)
        assert len(unused) > 0  # eyeballs kept in the array, used by no face
        dist_mm = _surface_distance(assets, truth["vertices"], scan.vertices) * 1000
        assert np.percentile(dist_mm, 99) < 1.0
        lmk_err_mm = np.linalg.norm(scan.landmarks - truth["landmarks"], axis=1) * 1000
        assert scan.landmarks.shape == (68, 3) and lmk_err_mm.max() < 3.0
        assert len(scan.cameras) == 2
        for view in scan.cameras:
            zpath, _, member = view.image.partition("::")
            with zipfile.ZipFile(zpath) as zf, zf.open(member) as fh:
                image = np.asarray(Image.open(fh).convert("RGB"))
            assert view.size == (256, 167)
            _check_camera(view, image, truth["vertices"], assets.model.faces)


def test_ava_errors(ava_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "face_topology.obj"
    with pytest.raises(ScanError, match=re.escape(str(missing))):
        list(ava256.iter_records(ava_root, topology=missing))
    copy = tmp_path / "ava"
    shutil.copytree(ava_root, copy)
    zpath = next(copy.glob("*/decoder")) / "kinematic_tracking" / "registration_vertices.zip"
    with zipfile.ZipFile(zpath) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["000100.ply"] = b"ply\nformat binary_little_endian 1.0\nelement vertex 9\nproperty float x\nend_header\n"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    record = _ava_records(copy)[0]
    with pytest.raises(ScanError, match=r"registration_vertices\.zip::000100\.ply"):
        ava256.load_scan(record)
    (copy / "assets" / "face_topology.obj").unlink()
    with pytest.raises(ScanError, match=r"face_topology\.obj"):
        ava256.load_scan(record)
