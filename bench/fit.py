"""Fitting speed: seconds per image one at a time vs batched, on the same oracle cues.

    .venv/bin/python bench/fit.py FLAME_DIR [--batch 32] [--raster 128] [--steps 200]

Cues are ground-truth normal/UV maps of random synthetic heads (as in bench/fit_oracle.py). Prints the
per-image time fitted alone (baseline, a few images) and in one batch of B, the ratio, and a JSON line.
On a GPU the rasteriser is PyTorch3D; on a CPU, embree.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from p3dmm.fitting.correspondences import fit_inputs
from p3dmm.fitting.fit import FitConfig, fit_batch
from p3dmm.fitting.synthetic import oracle_cues
from p3dmm.flame.files import load_assets
from p3dmm.flame.model import FLAME


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("flame")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--single", type=int, default=3, help="images fitted one at a time for the baseline")
    ap.add_argument("--raster", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assets = load_assets(args.flame)
    flame = FLAME(assets).to(device)
    config = FitConfig(raster_size=args.raster, steps=args.steps, n_shape=50, n_expression=20)
    cues = oracle_cues(assets, flame.cpu(), args.batch, args.raster, config.focal_init * args.raster)
    pred, masks = cues.pred, cues.mask
    flame = flame.to(device)
    fit_v, vertex_uv, mirror = fit_inputs(assets)

    def run(sl: slice) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fit_batch(flame, {k: v[sl] for k, v in pred.items()}, fit_v, vertex_uv, mirror, config, pixel_mask=masks[sl])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(slice(0, 1))  # warm-up
    single = sum(run(slice(i, i + 1)) for i in range(args.single)) / args.single
    batched = run(slice(0, args.batch)) / args.batch
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print("case                      ours (batched)   baseline (one at a time)   ratio   device  sizes")
    print(f"seconds per image         {batched:10.3f}       {single:10.3f}             {single / batched:6.2f}x  {name}  "
          f"B={args.batch} raster={args.raster} steps={args.steps} V={assets.model.num_vertices}")
    print(f"images per second         {1 / batched:10.2f}       {1 / single:10.2f}")
    print(json.dumps({"batched_s_per_image": batched, "single_s_per_image": single, "ratio": single / batched,
                      "device": name, "batch": args.batch, "raster": args.raster, "steps": args.steps}))


if __name__ == "__main__":
    main()
