"""Registration benchmark on one CPU core: register_scan vs trimesh's NICP (Amberg, Sumner) baselines.

    .venv/bin/python bench/registration.py [--vertices 5023] [--cases 2] [--threads 1]

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

import numpy as np
import torch
import trimesh

from p3dmm.flame.files import load_assets
from p3dmm.flame.similarity import Similarity
from p3dmm.flame.synth import write_synthetic_flame
from p3dmm.registration.register import register_scan
from p3dmm.registration.synthetic import make_scan


def errors(vertices_flame: np.ndarray, truth: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    e = np.linalg.norm(vertices_flame[region] - truth[region], axis=1) * 1e3
    return float(np.median(e)), float(np.quantile(e, 0.95))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vertices", type=int, default=5023)
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--points", type=int, default=20000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = tempfile.mkdtemp()
    write_synthetic_flame(folder, n_vertices=args.vertices, seed=0)
    assets = load_assets(folder)
    num_v = assets.model.v_template.shape[0]
    face = np.zeros(num_v, dtype=bool)
    face[assets.masks["face"]] = True
    for k in ("left_eyeball", "right_eyeball"):
        face[assets.masks[k]] = False
    flame_faces = np.asarray(assets.model.faces)
    rows, out = [], {}
    for case in range(args.cases):
        arbitrary = case % 2 == 1
        s = make_scan(assets, 10 + case, landmarks=not arbitrary, arbitrary_frame=arbitrary, target_points=args.points)
        name = f"scan{case}-" + ("rotated-mm-nolmk" if arbitrary else "lmk")
        t = time.perf_counter()
        reg = register_scan(s.scan, assets)
        t_ours = time.perf_counter() - t
        sim = Similarity(reg.params["scale"], reg.params["rotation"], reg.params["similarity_translation"])
        ours_flame = s.to_scan.invert_points(reg.vertices)
        med, p95 = errors(ours_flame, s.truth, face)
        # baselines in FLAME metres from our FLAME fit (registration minus the NICP offsets)
        fit = sim.invert_points(reg.vertices) - reg.params["offsets"]
        target = trimesh.Trimesh(sim.invert_points(s.scan.vertices), s.scan.faces, process=False)
        source = trimesh.Trimesh(fit, flame_faces, process=False)
        lm_args = {}
        if s.scan.landmarks is not None and assets.landmarks is not None:
            lmf = assets.landmarks.full_faces
            lm_args = {"source_landmarks": (lmf, assets.landmarks.full_bary),
                       "target_positions": sim.invert_points(s.scan.landmarks)}
        base = {}
        for bname, fn in (("amberg", trimesh.registration.nricp_amberg), ("sumner", trimesh.registration.nricp_sumner)):
            t = time.perf_counter()
            try:
                res = fn(source, target, distance_threshold=0.005, **lm_args)
                ok = True
            except Exception as exc:  # a baseline failing is a result, not a crash
                res, ok = fit, f"failed: {type(exc).__name__}: {exc}"
            tb = time.perf_counter() - t
            back = s.to_scan.invert_points(sim.apply(np.asarray(res)))
            bmed, bp95 = errors(back, s.truth, face)
            base[bname] = {"seconds": tb, "median_mm": bmed, "p95_mm": bp95, "ok": ok}
            rows.append((f"{name} time {bname}", t_ours, tb, reg.metrics["t_nicp_s"], tb / reg.metrics["t_nicp_s"]))
            rows.append((f"{name} median/p95 mm {bname}", med, bmed, p95, bp95))
        out[name] = {"ours": {"seconds": t_ours, "median_mm": med, "p95_mm": p95, "accepted": reg.accepted,
                              "metrics": {k: v for k, v in reg.metrics.items() if isinstance(v, float | int)}},
                     "baselines": base, "scan_points": int(len(s.scan.vertices)), "flame_vertices": num_v}
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
