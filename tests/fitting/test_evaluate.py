"""`p3dmm eval` on FLAME-topology and other-topology ground truth, its error maps, and the NoW protocol."""

from __future__ import annotations

import json
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from p3dmm.cli import main
from p3dmm.fitting.error_maps import COLORMAP, LEGEND_HEIGHT, SCALE_MM
from p3dmm.fitting.evaluate import MAP_SIZE, NOW_IBUG, evaluate_dir, write_report
from p3dmm.flame.files import load_assets
from p3dmm.flame.landmarks import frontal_landmarks
from p3dmm.flame.mesh import save_mesh
from p3dmm.flame.model import FLAME


@pytest.fixture(scope="module")
def synthetic(flame_1000):
    """A synthetic FLAME folder, a face of known shape (`truth`) and the mean face, shared by the tests."""
    flame_dir = flame_1000
    assets = load_assets(flame_dir)
    flame = FLAME(assets)
    shape = torch.zeros(1, flame.n_shape)
    shape[0, :5] = torch.tensor([1.0, -1.0, 0.5, 0.8, -0.3])
    with torch.no_grad():
        truth = flame(shape=shape).vertices[0].double().numpy()
        mean = flame().vertices[0].double().numpy()
    face = np.zeros(len(truth), bool)
    face[assets.masks["face"]] = True
    return SimpleNamespace(dir=flame_dir, assets=assets, faces=assets.model.faces, truth=truth, mean=mean, face=face)


def _write_fit(folder, name, vertices, faces) -> None:
    folder.mkdir(exist_ok=True)
    save_mesh(folder / f"{name}.posed.ply", vertices, faces)
    save_mesh(folder / f"{name}.neutral.ply", vertices, faces)


def _inflated(vertices, faces, offset_m):
    """The mesh moved `offset_m` along its vertex normals (a fit that is everywhere too big)."""
    return vertices + offset_m * trimesh.Trimesh(vertices, faces, process=False).vertex_normals


def test_eval_table_and_page(synthetic, tmp_path, capsys):
    faces, truth = synthetic.faces, synthetic.truth
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    rot = trimesh.transformations.rotation_matrix(0.3, [0, 1, 0])[:3, :3]
    for name, fitted in (("exact", truth @ rot.T + 0.05), ("mean", synthetic.mean), ("nogt", truth)):
        _write_fit(pred, name, fitted, faces)
    for name in ("exact", "mean"):
        _write_fit(gt, name, truth, faces)
    # "other": ground truth in another topology (subdivided), with its 68 landmarks
    sub_v, sub_f = trimesh.remesh.subdivide(truth, faces)
    _write_fit(pred, "other", truth, faces)
    save_mesh(gt / "other.ply", np.asarray(sub_v), np.asarray(sub_f))
    np.save(gt / "other.landmarks.npy", frontal_landmarks(synthetic.assets, truth))

    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--flame", str(synthetic.dir)]) == 0
    assert "report:" in capsys.readouterr().out
    out = pred / "eval"
    result = json.loads((out / "eval.json").read_text())
    exact, wrong = result["images"]["exact"]["posed"], result["images"]["mean"]["posed"]
    assert exact["chamfer_l1_mm"] < 0.05 and exact["fscore_1mm"] > 0.99  # rigid motion is aligned away
    assert wrong["chamfer_l1_mm"] > 5 * max(exact["chamfer_l1_mm"], 0.01)  # a different identity is not
    assert result["images"]["other"]["posed"]["chamfer_l1_mm"] < 0.5  # other topology, landmark-initialised
    assert "error" in result["images"]["nogt"]["posed"]
    assert "error" in result["images"]["other"]["neutral"]  # no neutral ground truth given
    assert (out / "eval.csv").read_text().count("\n") == 1 + 4 * 2
    assert result["summary_mean"]["posed"]["images"] == 3
    page = (out / "index.html").read_text()
    assert "Geometry evaluation" in page
    # an error map per evaluated row, none for the rows in error, all shown on the page
    for name, row in result["images"].items():
        for kind, m in row.items():
            assert ("map" in m) == ("error" not in m), (name, kind)
            if "map" in m:
                assert (out / m["map"]).is_file() and f"src='{m['map']}'" in page
                with Image.open(out / m["map"]) as im:
                    width, height = im.size
                assert 2 * MAP_SIZE <= width <= 2 * MAP_SIZE + 40 and MAP_SIZE + LEGEND_HEIGHT < height < 2 * MAP_SIZE


def _decoded_mm(rgb: np.ndarray) -> np.ndarray:
    """Distances (mm) read back from an error map's colours, NaN on grey and white pixels. Shading scales a
    colour and the specular highlight adds white: neither changes its hue, and the colormap's hue is monotonic."""
    ramp = (matplotlib.colormaps[COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    ramp_hue = np.asarray(Image.fromarray(ramp[None]).convert("HSV"))[0, :, 0].astype(float)
    hsv = np.asarray(Image.fromarray(rgb).convert("HSV")).astype(float)
    mm = np.interp(hsv[..., 0], ramp_hue[::-1], np.linspace(SCALE_MM, 0, 256))
    return np.where(hsv[..., 1] > 60, mm, np.nan)


def test_error_map_is_warm_where_the_fit_is_wrong(synthetic, tmp_path):
    """A patch of the subject's left cheek pushed out by 4 mm: in the front view (subject's left on the image's
    right, eyes above mouth) that patch, and only it, reads millimetres; an exact fit reads ~0 everywhere."""
    faces, truth = synthetic.faces, synthetic.truth
    lmk = frontal_landmarks(synthetic.assets, truth)
    cheek = (lmk[45] + lmk[54]) / 2 + np.array([0.01, 0.0, 0.0])  # between left eye corner and mouth corner
    patch = synthetic.face & (np.linalg.norm(truth - cheek, axis=1) < 0.025)
    bumped = truth.copy()
    bumped[patch] = _inflated(truth, faces, 0.004)[patch]
    pred, gt, out = tmp_path / "pred", tmp_path / "gt", tmp_path / "eval"
    _write_fit(pred, "bumped", bumped, faces)
    _write_fit(pred, "exact", truth, faces)
    for name in ("bumped", "exact"):
        _write_fit(gt, name, truth, faces)
    result = evaluate_dir(pred, gt, synthetic.dir, samples=5000, out=out)

    def coloured_panel(name):
        rgb = np.asarray(Image.open(out / result["images"][name]["posed"]["map"]).convert("RGB"))
        return _decoded_mm(rgb[: -LEGEND_HEIGHT, : rgb.shape[1] // 2])  # the left panel, above the colour bar

    mm = coloured_panel("bumped")
    height, width = mm.shape
    hot = np.argwhere(mm > 2.5)
    assert len(hot) > 500 and np.nanmedian(mm) < 0.3  # a visible patch on an otherwise cold face
    row, col = hot.mean(0)
    assert col > 0.55 * width and height / 3 < row < 2 * height / 3  # on the cheek at the image's right
    exact = coloured_panel("exact")
    assert np.isfinite(exact).sum() > 10000 and np.nanpercentile(exact, 95) < 0.3


def _now_scan(synthetic):
    """A NoW-style scan of `truth` in another topology (its face, subdivided) plus a blob 25 cm below it that
    NoW's face crop must leave out, and its 7 NoW landmarks."""
    faces, truth = synthetic.faces, synthetic.truth
    sub_v, sub_f = trimesh.remesh.subdivide(truth, faces[synthetic.face[faces].all(1)])
    used = np.unique(sub_f)
    remap = np.full(len(sub_v), -1)
    remap[used] = np.arange(len(used))
    blob = trimesh.creation.icosphere(subdivisions=2, radius=0.05)
    vertices = np.concatenate([np.asarray(sub_v)[used], np.asarray(blob.vertices) + np.array([0.0, -0.25, 0.0])])
    scan = trimesh.Trimesh(vertices, np.concatenate([remap[sub_f], np.asarray(blob.faces) + len(used)]),
                           process=False)
    return scan, frontal_landmarks(synthetic.assets, truth)[list(NOW_IBUG)]


@pytest.fixture(scope="module")
def now_data(synthetic, tmp_path_factory):
    """The scan moved by a known rigid motion; fits: exact, everywhere 1 or 2 mm too big, 5% too large,
    another identity (landmarks from a .txt file), and one without landmarks."""
    faces, truth = synthetic.faces, synthetic.truth
    scan, landmarks = _now_scan(synthetic)
    rot = trimesh.transformations.rotation_matrix(0.7, [0.3, 1.0, 0.2])[:3, :3]
    move = np.array([0.2, -0.1, 0.5])
    root = tmp_path_factory.mktemp("now")
    pred, gt = root / "pred", root / "gt"
    centre = truth.mean(0)
    fits = {"exact": truth, "big1mm": _inflated(truth, faces, 0.001), "big2mm": _inflated(truth, faces, 0.002),
            "scaled": (truth - centre) * 1.05 + centre, "other": synthetic.mean, "nolmk": truth}
    gt.mkdir()
    for name, vertices in fits.items():
        _write_fit(pred, name, vertices, faces)
        save_mesh(gt / f"{name}.ply", np.asarray(scan.vertices) @ rot.T + move, np.asarray(scan.faces))
        if name == "other":
            np.savetxt(gt / f"{name}.now_landmarks.txt", landmarks @ rot.T + move)
        elif name != "nolmk":
            np.save(gt / f"{name}.now_landmarks.npy", landmarks @ rot.T + move)
    out = root / "eval"
    result = evaluate_dir(pred, gt, synthetic.dir, protocol="now", out=out)
    write_report(result, out, pred)
    return SimpleNamespace(result=result, out=out, pred=pred, gt=gt, scan=scan)


def test_now_exact_fit_is_zero(now_data):
    for kind in ("posed", "neutral"):  # the neutral fit is measured against the same scan
        m = now_data.result["images"]["exact"][kind]
        assert m["median_mm"] < 0.2 and m["mean_mm"] < 0.2, m
        assert m["scan_points"] < len(now_data.scan.vertices) - 100  # the blob is outside NoW's face crop


def test_now_wrong_fits_measure_larger(now_data):
    rows = now_data.result["images"]
    one, two = rows["big1mm"]["posed"], rows["big2mm"]["posed"]
    # a fit 2 mm too big everywhere: rigid ICP slides the scan into it, which takes off part of the error but
    # (least squares over every scan point, from an exact start) never leaves more than the 2 mm
    assert 0.2 * 2 < two["mean_mm"] < 2.0 and two["median_mm"] > 0.25
    assert 1.6 < two["mean_mm"] / one["mean_mm"] < 2.4  # twice the offset, about twice the error
    assert rows["other"]["posed"]["mean_mm"] > 0.3  # another identity (landmarks from a .txt file)


def test_now_missing_landmarks_is_a_row(now_data):
    for kind in ("posed", "neutral"):
        error = now_data.result["images"]["nolmk"][kind]["error"]
        assert str(now_data.gt / "nolmk.now_landmarks.npy") in error and ".txt" in error
    assert now_data.result["summary"]["posed"]["images"] == 5


def test_now_report(now_data):
    out = now_data.out
    header = (out / "eval.csv").read_text().splitlines()[0]
    assert header == "image,kind,median_mm,mean_mm,std_mm,error"
    page = (out / "index.html").read_text()
    assert "NoW protocol" in page and "maps/exact.neutral.png" in page
    exact = np.asarray(Image.open(out / "maps" / "exact.posed.png").convert("RGB"))
    big = np.asarray(Image.open(out / "maps" / "big2mm.posed.png").convert("RGB"))
    scan_exact, scan_big = (_decoded_mm(m[: -LEGEND_HEIGHT, : m.shape[1] // 2]) for m in (exact, big))
    assert np.isfinite(scan_exact).sum() > 10000 and np.nanpercentile(scan_exact, 95) < 0.3
    # the scan's colours read back its distances (per pixel, not per point: roughly the row's median)
    assert abs(np.nanmedian(scan_big) - now_data.result["images"]["big2mm"]["posed"]["median_mm"]) < 0.15


def test_now_similarity_takes_out_scale(now_data, synthetic, tmp_path):
    """A fit 5% too large: the metrical (rigid) protocol measures it, the original NoW (similarity) does not."""
    assert now_data.result["images"]["scaled"]["posed"]["mean_mm"] > 0.5
    _write_fit(tmp_path / "pred", "scaled", synthetic.truth * 1.05, synthetic.faces)
    result = evaluate_dir(tmp_path / "pred", now_data.gt, synthetic.dir, protocol="now", similarity=True)
    assert result["images"]["scaled"]["posed"]["mean_mm"] < 0.2
    assert result["alignment"].startswith("similarity")
