"""FLAME benchmarks on CPU: `p3dmm --help` latency and FLAME forward+backward at batch 1 and 256.

    .venv/bin/python bench/flame.py [--vertices 5023] [--repeats 5] [--threads 2]

Baselines in the same run: `python -c pass` for the CLI (interpreter start-up is the floor), and
for FLAME a textbook LBS that blends a 4x4 matrix per vertex (as smplx does) on the same model.
Prints `case ours baseline ratio device sizes` rows, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from p3dmm.flame import lbs
from p3dmm.flame.model import FLAME
from p3dmm.flame.rotations import axis_angle_to_matrix
from p3dmm.flame.synth import synthesize_flame


def wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_vertex_matrix_lbs(flame: FLAME, shape, expression, pose) -> torch.Tensor:
    """Baseline: the common formulation that blends the 4x4 transforms per vertex, then applies them."""
    coeffs = torch.cat([shape, expression], dim=1)
    dirs = torch.cat([flame.shapedirs, flame.exprdirs], dim=2)
    v_shaped = flame.v_template + torch.einsum("bk,vck->bvc", coeffs, dirs)
    joints = torch.einsum("jv,bvc->bjc", flame.j_regressor, v_shaped)
    rots = axis_angle_to_matrix(pose.view(-1, 5, 3))
    feats = lbs.pose_features(rots)
    v_posed = v_shaped + torch.einsum("bp,vcp->bvc", feats, flame.posedirs)
    _, transforms = lbs.rigid_transforms(rots, joints, flame.parents)
    per_vertex = torch.einsum("vj,bjrc->bvrc", flame.lbs_weights, transforms)  # (B, V, 4, 4)
    homog = torch.cat([v_posed, torch.ones_like(v_posed[..., :1])], dim=-1)
    return torch.einsum("bvrc,bvc->bvr", per_vertex, homog)[..., :3]


def time_fwd_bwd(fn, batch: int, flame: FLAME, repeats: int) -> float:
    shape = (0.5 * torch.randn(batch, flame.n_shape)).requires_grad_()
    expression = (0.5 * torch.randn(batch, flame.n_expression)).requires_grad_()
    pose = (0.2 * torch.randn(batch, 15)).requires_grad_()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        verts = fn(shape, expression, pose)
        verts.square().sum().backward()
        if i:  # first run is warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vertices", type=int, default=5023)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []

    ours = wall([sys.executable, "-m", "p3dmm", "--help"], args.repeats)
    floor = wall([sys.executable, "-c", "pass"], args.repeats)
    rows.append(("p3dmm --help (s)", ours, floor, "cpu", "python -c pass as baseline"))

    with tempfile.TemporaryDirectory():
        assets = synthesize_flame(args.vertices, seed=0).assets
    flame = FLAME(assets)
    sizes = f"V={flame.num_vertices} 300+100 comps threads={args.threads}"

    def ours_fn(shape, expression, pose):
        return flame(shape=shape, expression=expression, pose=pose).vertices

    def base_fn(shape, expression, pose):
        return per_vertex_matrix_lbs(flame, shape, expression, pose)

    check = (torch.randn(2, 300), torch.randn(2, 100), 0.3 * torch.randn(2, 15))
    err = (ours_fn(*check) - base_fn(*check)).abs().max().item()
    for batch in (1, 256):
        rows.append((f"FLAME fwd+bwd B={batch} (ms)", 1000 * time_fwd_bwd(ours_fn, batch, flame, args.repeats),
                     1000 * time_fwd_bwd(base_fn, batch, flame, args.repeats), "cpu", sizes))

    print(f"{'case':<28} {'ours':>10} {'baseline':>10} {'ratio':>7}  device  sizes")
    for case, a, b, device, size in rows:
        print(f"{case:<28} {a:>10.3f} {b:>10.3f} {b / a:>7.2f}  {device:<6}  {size}")
    print(f"(ours vs baseline max vertex difference: {err:.2e} m)")
    print(json.dumps({"bench": "flame", "rows": [
        {"case": c, "ours": a, "baseline": b, "ratio": b / a, "device": d, "sizes": s} for c, a, b, d, s in rows
    ]}))


if __name__ == "__main__":
    main()
