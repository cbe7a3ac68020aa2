"""`p3dmm eval` on FLAME-topology and other-topology ground truth."""

from __future__ import annotations

import json

import numpy as np
import torch
import trimesh

from p3dmm.cli import main
from p3dmm.fitting.evaluate import flame_landmarks
from p3dmm.flame.files import load_assets
from p3dmm.flame.mesh import save_mesh
from p3dmm.flame.model import FLAME
from p3dmm.flame.synth import write_synthetic_flame


def test_eval_table_and_page(tmp_path, capsys):
    flame_dir = tmp_path / "flame"
    write_synthetic_flame(flame_dir, n_vertices=1000, seed=3)
    assets = load_assets(flame_dir)
    faces = assets.model.faces
    flame = FLAME(assets)
    shape = torch.zeros(1, flame.n_shape)
    shape[0, :5] = torch.tensor([1.0, -1.0, 0.5, 0.8, -0.3])
    with torch.no_grad():
        truth = flame(shape=shape).vertices[0].double().numpy()
        mean = flame().vertices[0].double().numpy()
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    rot = trimesh.transformations.rotation_matrix(0.3, [0, 1, 0])[:3, :3]
    for name, fitted in (("exact", truth @ rot.T + 0.05), ("mean", mean), ("nogt", truth)):
        save_mesh(pred / f"{name}.posed.ply", fitted, faces)
        save_mesh(pred / f"{name}.neutral.ply", fitted, faces)
    for name in ("exact", "mean"):
        save_mesh(gt / f"{name}.posed.ply", truth, faces)
        save_mesh(gt / f"{name}.neutral.ply", truth, faces)
    # "other": ground truth in another topology (subdivided), with its 68 landmarks
    sub_v, sub_f = trimesh.remesh.subdivide(truth, faces)
    save_mesh(pred / "other.posed.ply", truth, faces)
    save_mesh(pred / "other.neutral.ply", truth, faces)
    save_mesh(gt / "other.ply", np.asarray(sub_v), np.asarray(sub_f))
    np.save(gt / "other.landmarks.npy", flame_landmarks(assets, truth))

    assert main(["eval", "--pred", str(pred), "--gt", str(gt), "--flame", str(flame_dir)]) == 0
    assert "report:" in capsys.readouterr().out
    result = json.loads((pred / "eval" / "eval.json").read_text())
    exact, wrong = result["images"]["exact"]["posed"], result["images"]["mean"]["posed"]
    assert exact["chamfer_l1_mm"] < 0.05 and exact["fscore_1mm"] > 0.99  # rigid motion is aligned away
    assert wrong["chamfer_l1_mm"] > 5 * max(exact["chamfer_l1_mm"], 0.01)  # a different identity is not
    assert result["images"]["other"]["posed"]["chamfer_l1_mm"] < 0.5  # other topology, landmark-initialised
    assert "error" in result["images"]["nogt"]["posed"]
    assert "error" in result["images"]["other"]["neutral"]  # no neutral ground truth given
    assert (pred / "eval" / "eval.csv").read_text().count("\n") == 1 + 4 * 2
    assert "Geometry evaluation" in (pred / "eval" / "index.html").read_text()
