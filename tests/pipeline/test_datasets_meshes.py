"""NPHM, FaceScape TU and generic adapters on synthetic datasets in the real layouts (docs/datasets.md).

Accuracy is checked against the generators' ground truth (``_truth/``, never read by adapters), in
true millimetres (adapter units x metres_per_unit).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from p3dmm.flame.files import load_assets
from p3dmm.flame.scan import ScanError, ScanRecord
from p3dmm.flame.synth import write_synthetic_flame
from p3dmm.pipeline.datasets import facescape, generic, nphm
from p3dmm.pipeline.synth import scans as ss
from p3dmm.pipeline.synth.facescape import IPD_MM, LANDMARK_FILE, write_facescape
from p3dmm.pipeline.synth.generic import write_generic
from p3dmm.pipeline.synth.nphm import (
    NPHM_SCALE,
    RoughFit,
    cylinder_uv,
    rough_fit_rng,
    rough_params,
    write_nphm,
    write_textured_ply,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("sources_a")
    write_synthetic_flame(root / "flame", n_vertices=1000, seed=0)
    assets = load_assets(root / "flame")
    out = {"assets": assets, "root": root}
    out["nphm_ids"] = write_nphm(
        root / "nphm", assets, subjects=[17, 18], expressions=2, seed=1, target_faces=4000
    )
    (root / "nphm" / "README").mkdir()  # non-numeric names are skipped
    (root / "nphm" / "017" / "backup").mkdir()
    out["fs_ids"] = write_facescape(root / "fs", assets, subjects=[3], expressions=2, seed=2, subdivisions=1)
    out["gen_ids"] = write_generic(root / "gen", assets, subjects=2, expressions=2, seed=3)
    return out


def _face_error_mm(assets, vertices: np.ndarray, truth: dict) -> np.ndarray:
    """Distances (true mm) from the truth's face-region vertices to the nearest scan point."""
    dist, _ = cKDTree(vertices).query(truth["vertices"][assets.masks["face"]])
    return dist * float(truth["metres_per_unit"]) * 1000.0


# --- NPHM ---------------------------------------------------------------------------------------


def test_nphm_records_sorted_and_skip_junk(data):
    records = list(nphm.iter_records(data["root"] / "nphm"))
    ids = [r.scan_id for r in records]
    assert ids == ["nphm/017/000", "nphm/017/001", "nphm/018/000", "nphm/018/001"] == data["nphm_ids"]
    assert all(r.to_flame_scale == 0.25 and r.dataset == "nphm" for r in records)
    assert records[0].texture is not None and records[0].texture.endswith("texture.png")
    assert set(records[0].extra) == {"flame", "registration", "s", "R", "t"}


def test_nphm_scan_in_flame_metres_with_clutter(data):
    assets = data["assets"]
    for record in nphm.iter_records(data["root"] / "nphm"):
        scan = nphm.load_scan(record)
        truth = ss.read_truth(data["root"] / "nphm", record.scan_id)
        err = _face_error_mm(assets, scan.vertices, truth)
        assert np.median(err) < 2.0, record.scan_id
        assert scan.frame_known and scan.landmarks is None
        assert scan.uv is not None and scan.uv.shape == (len(scan.faces), 3, 2)
        below_neck = scan.vertices[:, 1] < truth["vertices"][:, 1].min() - 0.1
        assert below_neck.sum() > 50  # torso
        above_head = scan.vertices[:, 1] > truth["vertices"][:, 1].max() + 0.003
        assert above_head.sum() > 10  # hair
        edges = np.linalg.norm(scan.vertices[scan.faces] - scan.vertices[np.roll(scan.faces, 1, 1)], axis=-1)
        assert edges.max() > 0.1  # bridging triangles


def test_nphm_flame_fit_is_a_rough_fit_times_four(data):
    """flame.ply is FLAME of the truth's parameters with RoughFit noise (its own random stream), x 4."""
    from p3dmm.flame.mesh import load_mesh

    assets = data["assets"]
    record = next(nphm.iter_records(data["root"] / "nphm"))
    truth = ss.read_truth(data["root"] / "nphm", record.scan_id)
    fit, _ = load_mesh(record.extra["flame"])
    params = {k: truth[k] for k in ("shape", "expression", "pose", "translation")}
    expected = ss.posed_truth(assets, rough_params(params, rough_fit_rng(1, 17, 0)))
    assert np.abs(fit / NPHM_SCALE - expected).max() < 1e-6  # float32 storage
    error_mm = np.linalg.norm(fit / NPHM_SCALE - truth["vertices"], axis=1)[assets.masks["face"]] * 1000
    assert 1.0 < np.median(error_mm) < 12.0  # rough, as NPHM's shipped fits are, but a usable start


def test_nphm_init_vertices_in_the_scan_frame(data):
    assets = data["assets"]
    for record in nphm.iter_records(data["root"] / "nphm"):
        scan = nphm.load_scan(record)
        truth = ss.read_truth(data["root"] / "nphm", record.scan_id)["vertices"]  # the scan's frame and units
        assert scan.init_vertices.shape == truth.shape and scan.init_vertices.dtype == np.float64
        error_mm = np.linalg.norm(scan.init_vertices - truth, axis=1)[assets.masks["face"]] * 1000
        assert 1.0 < np.median(error_mm) < 12.0, record.scan_id


def test_nphm_flame_fit_missing_corrupt_or_nan(data, tmp_path):
    import trimesh

    src = data["root"] / "nphm" / "017" / "000"
    for eid in ("000", "001", "002"):
        shutil.copytree(src, tmp_path / "017" / eid)
    (tmp_path / "017" / "000" / "flame.ply").unlink()
    corrupt = tmp_path / "017" / "001" / "flame.ply"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    nan = tmp_path / "017" / "002" / "flame.ply"
    mesh = trimesh.load(nan, process=False)
    mesh.vertices[3] = np.nan
    mesh.export(nan)
    records = list(nphm.iter_records(tmp_path))
    assert "flame" not in records[0].extra and nphm.load_scan(records[0]).init_vertices is None
    with pytest.raises(ScanError, match=rf"^{corrupt}: "):
        nphm.load_scan(records[1])
    with pytest.raises(ScanError, match=rf"^{nan}: 1 of \d+ vertices are NaN"):
        nphm.load_scan(records[2])


def test_nphm_rough_fit_leaves_every_other_file_as_it_was(data, tmp_path, monkeypatch):
    """The rough fit draws from its own generator: changing how rough it is changes flame.ply only."""
    from p3dmm.pipeline.synth import nphm as synth_nphm

    args = dict(subjects=[17], expressions=1, seed=4, target_faces=2000, texture_size=32)
    write_nphm(tmp_path / "a", data["assets"], **args)
    rougher = RoughFit(shape_sigma=1.0, rotation_deg=5.0)
    monkeypatch.setattr(synth_nphm, "rough_params", lambda params, rng: rough_params(params, rng, rougher))
    write_nphm(tmp_path / "b", data["assets"], **args)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    changed = [str(f) for f in files if (tmp_path / "a" / f).read_bytes() != (tmp_path / "b" / f).read_bytes()]
    assert changed == ["017/000/flame.ply"]


def test_nphm_wrong_units_refused(data, tmp_path):
    assets = data["assets"]
    params = ss.sample_params(np.random.default_rng(0), assets.model.num_shape, assets.model.num_expression)
    head = ss.posed_truth(assets, params)
    folder = tmp_path / "017" / "000"
    folder.mkdir(parents=True)
    faces = assets.model.faces
    write_textured_ply(
        folder / "scan.ply", head, faces, cylinder_uv(head, faces), "texture.png"
    )  # metres, not x4
    record = next(nphm.iter_records(tmp_path))
    with pytest.raises(ScanError, match=r"scan\.ply: extent .* does not look like a head"):
        nphm.load_scan(record)


def test_nphm_corrupt_and_missing(data, tmp_path):
    src = data["root"] / "nphm" / "017" / "000"
    for eid in ("000", "001"):
        shutil.copytree(src, tmp_path / "017" / eid)
    bad = tmp_path / "017" / "000" / "scan.ply"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated binary body
    (tmp_path / "017" / "001" / "scan.ply").unlink()
    records = list(nphm.iter_records(tmp_path))
    with pytest.raises(ScanError, match=rf"^{bad}: "):
        nphm.load_scan(records[0])
    with pytest.raises(ScanError, match=r"017/001/scan\.ply: no such file"):
        nphm.load_scan(records[1])


# --- FaceScape TU ---------------------------------------------------------------------------------


def test_facescape_records(data):
    root = data["root"] / "fs"
    records = list(facescape.iter_records(root, landmark_indices=root / LANDMARK_FILE))
    assert [r.scan_id for r in records] == ["facescape/3/1_neutral", "facescape/3/2_smile"] == data["fs_ids"]
    assert [r.expression for r in records] == ["neutral", "smile"]
    assert all(r.texture and r.texture.endswith(".jpg") for r in records)
    assert all(Path(r.extra["dpmap"]).is_file() for r in records)


def test_facescape_units_landmarks_and_ipd(data):
    root, assets = data["root"] / "fs", data["assets"]
    for record in facescape.iter_records(root, landmark_indices=root / LANDMARK_FILE):
        scan = facescape.load_scan(record)
        truth = ss.read_truth(root, record.scan_id)
        assert np.median(_face_error_mm(assets, scan.vertices, truth)) < 2.0
        mpu = float(truth["metres_per_unit"])
        lmk_err = np.linalg.norm(scan.landmarks - truth["landmarks"], axis=1) * mpu * 1000
        assert lmk_err.max() < 8.0 and np.median(lmk_err) < 5.0, record.scan_id
        ipd_mm = np.linalg.norm(truth["landmarks"][42:48].mean(0) - truth["landmarks"][36:42].mean(0)) * 1000
        assert ipd_mm == pytest.approx(IPD_MM, rel=1e-6)
        # the OBJ has UV seams (more vt than v); vertex order must still be the file's v order
        text = Path(record.geometry).read_text()
        assert text.count("\nvt ") > text.count("\nv ")
        first_v = next(line for line in text.splitlines() if line.startswith("v "))
        assert np.allclose(scan.vertices[0] * 1000, [float(x) for x in first_v.split()[1:]])
    record = next(facescape.iter_records(root))
    assert facescape.load_scan(record).landmarks is None


def test_facescape_errors(data, tmp_path):
    root = data["root"] / "fs"
    record = next(facescape.iter_records(root))
    missing = ScanRecord(
        "facescape/9/1_neutral", "facescape", "9", "neutral", str(tmp_path / "1_neutral.obj")
    )
    with pytest.raises(ScanError, match=r"1_neutral\.obj: no such file"):
        facescape.load_scan(missing)
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing\n")
    with pytest.raises(ScanError, match=rf"^{empty}: no vertices"):
        facescape.load_scan(ScanRecord("x", "facescape", "1", "n", str(empty), to_flame_scale=0.001))
    nan = tmp_path / "nan.obj"
    nan.write_text("v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(ScanError, match=r"nan\.obj: 1 of 3 vertices are NaN"):
        facescape.load_scan(ScanRecord("x", "facescape", "1", "n", str(nan), to_flame_scale=0.001))
    idx = tmp_path / "lmk.npz"
    np.savez(idx, v10=np.arange(68) + 10**7)
    bad = ScanRecord(**{**record.__dict__, "extra": {"landmark_indices": str(idx)}})
    with pytest.raises(ScanError, match=r"lmk\.npz: landmark indices outside"):
        facescape.load_scan(bad)


# --- generic --------------------------------------------------------------------------------------


def test_generic_meshes_points_and_landmarks(data):
    root, assets = data["root"] / "gen", data["assets"]
    records = list(generic.iter_records(root))
    assert [r.scan_id for r in records] == sorted(data["gen_ids"]) == data["gen_ids"]
    kinds = []
    for record in records:
        scan = generic.load_scan(record)
        truth = ss.read_truth(root, record.scan_id)
        assert np.median(_face_error_mm(assets, scan.vertices, truth)) < 2.0
        kinds.append((Path(record.geometry).suffix, scan.faces is None, scan.landmarks is None))
        if scan.landmarks is not None:
            assert np.linalg.norm(scan.landmarks - truth["landmarks"], axis=1).max() < 3e-3
    assert (
        (".obj", False, True) in kinds and (".ply", True, False) in kinds and (".ply", False, False) in kinds
    )


def test_generic_errors(tmp_path):
    (tmp_path / "corrupt.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 9\nend")
    (tmp_path / "empty.ply").write_bytes(b"")
    (tmp_path / "nan.obj").write_text("v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "mm.obj").write_text("v 0 0 0\nv 150 0 0\nv 0 200 0\nf 1 2 3\n")
    records = {r.scan_id: r for r in generic.iter_records(tmp_path)}
    assert sorted(records) == ["generic/corrupt", "generic/empty", "generic/mm", "generic/nan"]
    expected = {
        "generic/corrupt": r"corrupt\.ply: cannot read",
        "generic/empty": r"empty\.ply: empty file",
        "generic/nan": r"nan\.obj: .*NaN",
        "generic/mm": r"mm\.obj: extent 200 m",
    }
    for scan_id, pattern in expected.items():
        with pytest.raises(ScanError, match=rf"^{tmp_path}/{pattern}"):
            generic.load_scan(records[scan_id])
    mm = next(generic.iter_records(tmp_path, scale=0.001))
    assert mm.to_flame_scale == 0.001


def test_missing_root_and_determinism(data, tmp_path):
    for adapter in (nphm, facescape, generic):
        with pytest.raises(ScanError, match="nowhere"):
            list(adapter.iter_records(tmp_path / "nowhere"))
    a = write_generic(tmp_path / "a", data["assets"], subjects=1, expressions=2, seed=5)
    b = write_generic(tmp_path / "b", data["assets"], subjects=1, expressions=2, seed=5)
    assert a == b
    for name in ("head0_0.ply", "head0_1.obj", "_truth/generic__head0_0.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
