"""The stress setting of the synthetic scans (pipeline/synth/stress.py; docs/datasets.md "Stress setting").

A 1,000-vertex synthetic FLAME; one stress scan checked for hair, missing skin, chin holes, fragments and
the torso bridge against its truth; every stress layout read back through its dataset reader; the default
output unchanged byte for byte; the command line.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from p3dmm.flame.files import load_assets
from p3dmm.flame.landmarks import frontal_landmarks
from p3dmm.flame.synth import write_synthetic_flame
from p3dmm.pipeline.datasets import reader, reader_options, write_synthetic
from p3dmm.pipeline.synth import scans as ss
from p3dmm.pipeline.synth import stress as st

STRESS_LAYOUTS = ("generic", "nphm", "facescape")

# sha256 of `write_synthetic("generic", ..., subjects=2, expressions=2, seed=5)` on the 1,000-vertex
# synthetic FLAME (seed 0), recorded before the stress setting was added: the default must not change.
GENERIC_DEFAULT_SHA256 = {
    "_truth/generic__head0_0.npz": "716db6683857f2125b44af0d523f1ef7df83b8a386dc27a1842a096d7205a038",
    "_truth/generic__head0_1.npz": "41b22491919d03df810d4dce2859b9dd60402a9268455deab3d8dd0844c39da1",
    "_truth/generic__head1_0.npz": "521e787e274aaec2f61732495192b698baafdf25a004221e31768129f3312483",
    "_truth/generic__head1_1.npz": "5ae8d6ef2196fc4308fa8b2cf4cfdb32e56071e8765a94fab38fe8d06465379e",
    "head0_0.lmk.npy": "7ed67b96b3654cb6969406211e02a2c5b9952c4894dc65534ca2dd1d9db0547a",
    "head0_0.ply": "6633928bf604c10f4aa96b7c1cc987640e9f80d2cc5e939ea09f9f8e08c93bf4",
    "head0_1.obj": "f72b00acecc7605b6043d00de8f851edbc06199e9310b2c38bac2d2a6a5f2fcb",
    "head1_0.lmk.npy": "3156126a199b1f0eec9028417a182878ae7442a7d33df230184bd55ee09b8ddc",
    "head1_0.ply": "a5e99e74548e88337325da41c5d891847f658aeac50426a42259ae94b61ca51a",
    "head1_1.lmk.npy": "eaf24e906326c6da22df34ff9743bef84042550c712cd8920fefea1b3b45d24d",
    "head1_1.ply": "f3a16a33334c33b3bfa3204ee0ee89946704a43609cc5c23567a515df32fbad1",
}


@pytest.fixture(scope="module")
def flame(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("stress")
    write_synthetic_flame(root / "flame", n_vertices=1000, seed=0)
    return {"root": root, "dir": root / "flame", "assets": load_assets(root / "flame")}


@pytest.fixture(scope="module")
def scan(flame) -> dict:
    assets = flame["assets"]
    rng = np.random.default_rng(7)
    params = st.stress_params(rng, assets.model.num_shape, assets.model.num_expression)
    truth = ss.add_detail(ss.posed_truth(assets, params), assets.model.faces, rng)
    verts, faces = st.stress_scan(assets, truth, rng)
    return {"verts": verts, "faces": faces, "truth": truth, "params": params}


def _surface_distance_mm(truth: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance (mm) from points to a dense sampling of the truth surface (~1 mm spacing)."""
    dense, _ = ss.subdivide_until(truth, faces, 120_000)
    return cKDTree(dense).query(points)[0] * 1000.0


def test_stress_params_are_hard():
    rng = np.random.default_rng(0)
    draws = [st.stress_params(rng, 300, 100) for _ in range(200)]
    shape = np.stack([d["shape"] for d in draws])
    assert np.all(shape[:, 100:] == 0) and 0.8 < shape[:, :100].std() < 1.2
    expression = np.stack([d["expression"] for d in draws])
    assert np.all(expression[:, 20:] == 0) and np.abs(expression).max() >= 2.0
    pose = np.stack([d["pose"].reshape(5, 3) for d in draws])
    jaw = pose[:, 2, 0]
    assert 0.35 < np.mean(jaw >= 0.15) < 0.65 and jaw.max() <= 0.45
    assert np.degrees(np.abs(pose[:, 0, :2])).max() <= 20.0 + 1e-9
    opposed = (pose[:, 0, :2] * pose[:, 1, :2]).sum(1) < -np.radians(5.0) ** 2
    assert opposed.mean() > 0.3  # head and neck rotations trade off in many draws


def test_hair_is_off_the_scalp_and_skin_under_it_is_gone(flame, scan):
    assets = flame["assets"]
    truth, verts = scan["truth"], scan["verts"]
    scalp = np.zeros(len(truth), dtype=bool)
    scalp[assets.masks["scalp"]] = True
    d_mm = _surface_distance_mm(truth, assets.model.faces, verts)
    _, nearest = cKDTree(truth).query(verts)
    over_scalp = scalp[nearest]
    hair = over_scalp & (d_mm > 3.0) & (d_mm < 30.0)
    assert hair.sum() > 1000
    share = np.mean((d_mm[hair] > 4.5) & (d_mm[hair] < 20.5))
    assert share > 0.9, share
    # deep inside the scalp (2 cm from the hairline) no scan point lies on the skin
    d_edge, _ = cKDTree(truth[~scalp]).query(truth[scalp])
    interior = truth[scalp][d_edge > 0.02]
    assert len(interior) > 5
    d_skin, _ = cKDTree(verts).query(interior)
    assert np.mean(d_skin > 0.003) > 0.9


def test_holes_under_the_chin(flame, scan):
    rim = st.boundary_edges(scan["faces"])
    lmk = frontal_landmarks(flame["assets"], scan["truth"])
    below_chin = lmk[8] + np.array([0.0, -0.015, -0.02])
    d = np.linalg.norm(scan["verts"][rim.ravel()] - below_chin, axis=1)
    assert d.min() < 0.02


def test_fragments_and_torso_bridge(scan):
    verts, faces, truth = scan["verts"], scan["faces"], scan["truth"]
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(verts),) * 2)
    n, label = connected_components(graph, directed=False)
    sizes = np.bincount(label)
    assert n >= 4 and np.sum(sizes == 9) >= 3  # 3-6 floating 3 x 3 patches
    main = label == np.argmax(sizes)
    # one piece holds the head top and a torso 20 cm below the neck: the bridge joins them
    assert verts[main, 1].max() > truth[:, 1].max() - 0.01
    assert verts[main, 1].min() < truth[:, 1].min() - 0.2
    length = np.linalg.norm(verts[edges[:, 0]] - verts[edges[:, 1]], axis=1)
    assert np.sum(length > 0.015) >= 48


def test_bridge_holes_fills_small_rims():
    grid_v = np.stack(np.meshgrid(np.linspace(0, 0.05, 11), np.linspace(0, 0.05, 11)), -1).reshape(-1, 2)
    verts = np.concatenate([grid_v, np.zeros((len(grid_v), 1))], axis=1)
    faces = ss._grid_faces(11, 11, wrap=False)
    keep = st.punch_holes(verts, faces, np.array([[0.025, 0.025, 0.0]]), np.array([0.006]))
    faces = faces[keep]
    before = len(st.boundary_edges(faces))
    v2, f2 = st.bridge_holes(verts, faces, np.random.default_rng(0), fraction=1.0)
    assert len(v2) == len(verts) + 1  # one fan vertex for the hole (the outer rim is too long)
    assert len(st.boundary_edges(f2)) < before


def test_decimate_reaches_about_target_and_keeps_the_surface():
    verts, faces = ss.subdivide_until(*_sphere(), 20_000)
    v, f = st.decimate(verts, faces, 5_000)
    assert 4_500 < len(f) < 5_500 and f.max() < len(v)
    radius = np.linalg.norm(v - verts.mean(axis=0), axis=1)
    assert np.allclose(radius, np.linalg.norm(verts - verts.mean(axis=0), axis=1).mean(), rtol=0.02)


def _sphere() -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


@pytest.mark.parametrize("layout", STRESS_LAYOUTS)
def test_stress_layout_reads_back(flame, layout):
    out = flame["root"] / f"stress_{layout}"
    ids = write_synthetic(layout, out, flame["assets"], subjects=1, expressions=1, seed=3, stress=True)
    module = reader(layout)
    records = list(module.iter_records(out, **reader_options(layout, {}, out)))
    assert [r.scan_id for r in records] == ids
    for record in records:
        geometry = module.load_scan(record)
        truth = ss.read_truth(out, record.scan_id)
        assert geometry.faces is not None and len(geometry.faces) > 20_000
        d, _ = cKDTree(geometry.vertices).query(truth["vertices"][flame["assets"].masks["face"]])
        d_mm = d * float(truth["metres_per_unit"]) * 1000.0
        assert np.median(d_mm) < 1.5
        if layout == "facescape":
            err = np.linalg.norm(geometry.landmarks - truth["landmarks"], axis=1) * 1000.0
            assert np.median(err) < 3.0


def test_registry_refuses_stress_for_layouts_without_it(flame, tmp_path):
    with pytest.raises(ValueError, match="no stress setting"):
        write_synthetic("ava256", tmp_path, flame["assets"], subjects=1, expressions=1, seed=0, stress=True)


def test_default_output_unchanged(flame, tmp_path):
    write_synthetic("generic", tmp_path, flame["assets"], subjects=2, expressions=2, seed=5)
    for name, digest in GENERIC_DEFAULT_SHA256.items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest, name


def test_cli_stress(flame, tmp_path):
    from p3dmm.cli import main

    out = tmp_path / "gen"
    argv = ["synth", "scans", "--layout", "generic", "--out", str(out), "--flame", str(flame["dir"]),
            "--subjects", "1", "--expressions", "1", "--stress", "true"]
    assert main(argv) == 0
    assert (out / "_truth" / "generic__head0_0.npz").exists()
    assert len(ss.read_truth(out, "generic/head0_0")["shape"].nonzero()[0]) > 50
