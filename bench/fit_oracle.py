"""Oracle check of the fitting: ground-truth normal/UV maps as the cues.

    .venv/bin/python bench/fit_oracle.py FLAME_DIR [B=4] [RASTER=128] [STEPS=400] ['{"w_normal": 20}']

Renders B random synthetic heads (varied pose and expression) with the fitting camera, fits them as one
batch, and prints per image the median per-vertex error over the face mask, posed and neutral, after
rigid and after similarity alignment. (Chamfer L1 after ICP, as the issue asks, comes with the evaluator.)
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from p3dmm.fitting.correspondences import fit_inputs
from p3dmm.fitting.fit import FitConfig, fit_batch
from p3dmm.fitting.synthetic import oracle_cues
from p3dmm.flame.files import load_assets
from p3dmm.flame.model import FLAME
from p3dmm.flame.similarity import umeyama


def align(a: torch.Tensor, b: torch.Tensor, scale: bool = False) -> torch.Tensor:
    """a moved onto b by the best rigid (or similarity) transform (registration.align.umeyama)."""
    moved = umeyama(a.double().numpy(), b.double().numpy(), with_scale=scale).apply(a.double().numpy())
    return torch.from_numpy(moved).to(b.dtype)


def main() -> None:
    flame_dir = sys.argv[1]
    batch, size, steps = (int(x) for x in (sys.argv[2:5] + ["4", "128", "400"][len(sys.argv[2:5]) :]))
    assets = load_assets(flame_dir)
    flame = FLAME(assets)
    overrides = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    config = FitConfig(**{"raster_size": size, "steps": steps, "n_shape": 50, "n_expression": 20, **overrides})
    cues = oracle_cues(assets, flame, batch, size, config.focal_init * size)
    truth, neutral_truth = cues.posed, cues.neutral
    fit_v, vertex_uv, mirror = fit_inputs(assets)
    start = time.perf_counter()
    res = fit_batch(flame, cues.pred, fit_v, vertex_uv, mirror, config, pixel_mask=cues.mask)
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
