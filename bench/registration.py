"""Registration benchmark on one CPU core: register_scan vs trimesh's NICP (Amberg, Sumner) baselines.

    .venv/bin/python bench/registration.py [--vertices 5023] [--cases 2] [--threads 1] [--setting easy|stress]

Scans come from `p3dmm.registration.synthetic.make_scan` (truth known). The baselines start from our
FLAME fit (same alignment and fit; landmarks passed as vertex targets where the scan has them), in
FLAME metres, with the same 5 mm correspondence gate, so the rows compare the refinement step.
Errors: per-vertex distance to the truth over the face mask, mm. Prints `case ours baseline ratio
device sizes` rows, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from p3dmm.flame.files import load_assets
from p3dmm.flame.similarity import Similarity
from p3dmm.flame.synth import write_synthetic_flame
from p3dmm.pipeline.datasets import reader, reader_options, write_synthetic
from p3dmm.pipeline.report.registration_eval import correspondence_errors_mm
from p3dmm.pipeline.synth.scans import read_truth
from p3dmm.registration.register import register_scan
from p3dmm.registration.synthetic import make_scan


def compare(name: str, scan, truth: np.ndarray, metres_per_unit: float, assets, face: np.ndarray,
            rows: list, out: dict) -> None:
    """Register `scan` with ours, then run both trimesh baselines from our FLAME fit; errors against `truth`
    (FLAME topology, the scan's frame and units) over the face, in mm."""
    t = time.perf_counter()
    reg = register_scan(scan, assets)
    t_ours = time.perf_counter() - t
    errs = correspondence_errors_mm(reg.vertices, truth, face, metres_per_unit)
    med, p95 = float(np.median(errs)), float(np.quantile(errs, 0.95))
    sim = Similarity(reg.params["scale"], reg.params["rotation"], reg.params["similarity_translation"])
    # baselines in FLAME metres from our FLAME fit (registration minus the NICP offsets)
    fit = sim.invert_points(reg.vertices) - reg.params["offsets"]
    target = trimesh.Trimesh(sim.invert_points(scan.vertices), scan.faces, process=False)
    source = trimesh.Trimesh(fit, np.asarray(assets.model.faces), process=False)
    lm_args = {}
    if scan.landmarks is not None and assets.landmarks is not None:
        lmf = assets.landmarks.full_faces
        ok = np.isfinite(scan.landmarks).all(axis=1)
        lm_args = {"source_landmarks": (lmf[ok], assets.landmarks.full_bary[ok]),
                   "target_positions": sim.invert_points(scan.landmarks[ok])}
    base = {}
    for bname, fn in (("amberg", trimesh.registration.nricp_amberg), ("sumner", trimesh.registration.nricp_sumner)):
        t = time.perf_counter()
        try:
            res = fn(source, target, distance_threshold=0.005, **lm_args)
            ok = True
        except Exception as exc:  # a baseline failing is a result, not a crash
            res, ok = fit, f"failed: {type(exc).__name__}: {exc}"
        tb = time.perf_counter() - t
        b_errs = correspondence_errors_mm(sim.apply(np.asarray(res)), truth, face, metres_per_unit)
        bmed, bp95 = float(np.median(b_errs)), float(np.quantile(b_errs, 0.95))
        base[bname] = {"seconds": tb, "median_mm": bmed, "p95_mm": bp95, "ok": ok}
        rows.append((f"{name} time {bname}", t_ours, tb, reg.metrics["t_nicp_s"], tb / reg.metrics["t_nicp_s"]))
        rows.append((f"{name} median/p95 mm {bname}", med, bmed, p95, bp95))
    out[name] = {"ours": {"seconds": t_ours, "median_mm": med, "p95_mm": p95, "accepted": reg.accepted,
                          "metrics": {k: v for k, v in reg.metrics.items() if isinstance(v, float | int)}},
                 "baselines": base, "scan_points": int(len(scan.vertices)),
                 "flame_vertices": int(assets.model.v_template.shape[0])}


def easy_cases(assets, n: int, points: int):
    """`make_scan` heads: even cases with landmarks in FLAME's frame, odd ones rotated, in mm, no landmarks."""
    for case in range(n):
        arbitrary = case % 2 == 1
        s = make_scan(assets, 10 + case, landmarks=not arbitrary, arbitrary_frame=arbitrary, target_points=points)
        name = f"scan{case}-" + ("rotated-mm-nolmk" if arbitrary else "lmk")
        yield name, s.scan, s.to_scan.apply(s.truth), 1.0 / s.to_scan.scale


def stress_cases(assets, folder: Path):
    """One stress scan per layout: generic (landmarks, FLAME frame) and nphm (no landmarks, hair, torso)."""
    for layout, seed in (("generic", 6), ("nphm", 11)):
        root = folder / layout
        write_synthetic(layout, root, assets, subjects=1, expressions=1, seed=seed, stress=True)
        module = reader(layout)
        record = next(iter(module.iter_records(root, **reader_options(layout, {}, root))))
        truth = read_truth(root, record.scan_id)
        yield f"stress-{layout}", module.load_scan(record), truth["vertices"], float(truth["metres_per_unit"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vertices", type=int, default=5023)
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--setting", choices=("easy", "stress"), default="easy",
                    help="easy: make_scan heads; stress: stress scans (generic, nphm) of a FLAME-scale model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp())
    write_synthetic_flame(folder / "flame", n_vertices=args.vertices, seed=0,
                          identity="flame" if args.setting == "stress" else "easy")
    assets = load_assets(folder / "flame")
    face = np.asarray(assets.masks["face"], dtype=np.int64)
    eyes = np.concatenate([assets.masks["left_eyeball"], assets.masks["right_eyeball"]])
    face = face[~np.isin(face, eyes)]
    cases = easy_cases(assets, args.cases, args.points) if args.setting == "easy" else stress_cases(assets, folder)
    rows, out = [], {}
    for name, scan, truth, metres_per_unit in cases:
        compare(name, scan, truth, metres_per_unit, assets, face, rows, out)
    num_v = assets.model.v_template.shape[0]
    dev = f"cpu x{args.threads} thread"
    print("case | ours | baseline | ratio | device | sizes")
    for r in rows:
        if "time" in r[0]:
            print(f"{r[0]} | total {r[1]:.2f} s (nicp {r[3]:.2f} s) | {r[2]:.2f} s | baseline/nicp {r[4]:.1f}x, "
                  f"baseline/total {r[2] / r[1]:.1f}x | {dev} | V={num_v}")
        else:
            print(f"{r[0]} | {r[1]:.3f} / {r[3]:.3f} | {r[2]:.3f} / {r[4]:.3f} | - | {dev} | V={num_v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
