"""Oracle check of the fitting (work in progress, issue 7): ground-truth normal/UV maps as the cues.

    .venv/bin/python bench/fit_oracle.py FLAME_DIR [B=4] [RASTER=128] [STEPS=400]

Renders B random synthetic heads (varied pose and expression) with the fitting camera, fits them as one
batch, and prints per image the median per-vertex error over the face mask, posed and neutral, after
rigid and after similarity alignment. (Chamfer L1 after ICP, as the issue asks, comes with the evaluator.)
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from p3dmm.fitting.fit import FitConfig, fit_batch, fixed_camera
from p3dmm.flame.files import load_assets
from p3dmm.flame.mirror import mirror_map
from p3dmm.flame.model import FLAME
from p3dmm.flame.render import RayCaster
from p3dmm.flame.rotations import axis_angle_to_matrix
from p3dmm.pipeline.synth_scans import sample_params
from p3dmm.pipeline.targets import render_targets, uv_region_faces


def align(a: torch.Tensor, b: torch.Tensor, scale: bool = False) -> torch.Tensor:
    """a moved onto b by the best rigid (or similarity) transform (Umeyama)."""
    ca, cb = a.mean(0), b.mean(0)
    u, s, vt = torch.linalg.svd((a - ca).T @ (b - cb))
    d = torch.diag(torch.tensor([1.0, 1.0, float(torch.sign(torch.det(u @ vt)))]))
    rot = (u @ d @ vt).T
    k = (s * torch.diag(d)).sum() / ((a - ca) ** 2).sum() if scale else 1.0
    return k * (a - ca) @ rot.T + cb


def main() -> None:
    flame_dir = sys.argv[1]
    batch, size, steps = (int(x) for x in (sys.argv[2:5] + ["4", "128", "400"][len(sys.argv) - 2 :]))
    assets = load_assets(flame_dir)
    flame = FLAME(assets)
    rng = np.random.default_rng(0)
    config = FitConfig(raster_size=size, steps=steps, n_shape=50, n_expression=20)
    region = uv_region_faces(assets)
    maps, masks, truth, neutral_truth = [], [], [], []
    for _ in range(batch):
        p = sample_params(rng, assets.model.num_shape, assets.model.num_expression)
        p["pose"][:3] = rng.normal(0, 0.25, 3)
        with torch.no_grad():
            out = flame(**{k: torch.tensor(v, dtype=torch.float32)[None] for k, v in p.items()})
            neutral = flame(shape=torch.tensor(p["shape"], dtype=torch.float32)[None]).vertices[0]
        pose = torch.tensor(p["pose"]).view(5, 3)
        head = (axis_angle_to_matrix(pose[0]) @ axis_angle_to_matrix(pose[1])).numpy()
        focal = torch.tensor([config.focal_init * size * rng.uniform(0.9, 1.1)], dtype=torch.float64)
        cam = fixed_camera(1, size, focal, torch.zeros(1, 2, dtype=torch.float64))
        t = render_targets(RayCaster(out.vertices[0].double().numpy(), assets.model.faces), cam, head,
                           assets.uv.vt, assets.uv.ft, region)
        maps.append((torch.from_numpy(t.normal).permute(2, 0, 1), torch.from_numpy(t.uv).permute(2, 0, 1)))
        masks.append(torch.from_numpy(t.mask))
        truth.append(out.vertices[0])
        neutral_truth.append(neutral)
    pred = {"normal": torch.stack([m[0] for m in maps]), "uv": torch.stack([m[1] for m in maps])}
    fit_v = np.unique(assets.model.faces[region])
    vertex_uv = np.stack([assets.uv.vertex_uv[:, 0], 1 - assets.uv.vertex_uv[:, 1]], axis=1)
    start = time.perf_counter()
    res = fit_batch(flame, pred, fit_v, vertex_uv, mirror_map(assets.model.v_template), config,
                    pixel_mask=torch.stack(masks))
    seconds = time.perf_counter() - start
    from p3dmm.fitting.metrics import evaluate_face

    face = torch.as_tensor(assets.masks["face"])
    face_mask = np.zeros(assets.model.num_vertices, bool)
    face_mask[assets.masks["face"]] = True
    face_faces = face_mask[assets.model.faces].all(1)
    chamfer = {"posed": [], "neutral": []}
    for b in range(batch):
        row = []
        for kind, fitted, true in (("posed", res.vertices[b], truth[b]), ("neutral", res.neutral[b], neutral_truth[b])):
            for scale in (False, True):
                row.append(float((align(fitted[face], true[face], scale) - true[face]).norm(dim=-1).median() * 1000))
            m = evaluate_face(fitted.double().numpy(), true.double().numpy(), assets.model.faces, face_faces,
                              fitted[face].double().numpy(), true[face].double().numpy())
            chamfer[kind].append(m.chamfer_l1_mm)
        print(f"image {b}: per-vertex posed {row[0]:.2f} mm (similarity {row[1]:.2f}), neutral {row[2]:.2f} mm "
              f"(similarity {row[3]:.2f}); Chamfer L1 (rigid ICP) posed {chamfer['posed'][-1]:.2f} mm, "
              f"neutral {chamfer['neutral'][-1]:.2f} mm")
    print(f"median Chamfer L1: posed {np.median(chamfer['posed']):.2f} mm, neutral {np.median(chamfer['neutral']):.2f} mm "
          "(goal: <= 1.0 and <= 2.0)")
    print(f"{batch} images, raster {size}, {steps} steps: {seconds:.1f} s ({seconds / batch:.2f} s/image)")


if __name__ == "__main__":
    main()
