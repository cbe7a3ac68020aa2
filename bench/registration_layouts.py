"""Registration accuracy against ground truth: every layout, the easy and the stress scan settings, both
synthetic FLAME models (our narrow identity and one at FLAME's scale), several vertex counts.

    .venv/bin/python bench/registration_layouts.py [--layouts nphm facescape generic facescape-mview ava256]
        [--vertices 1000 2000 5023] [--identity easy flame] [--scans easy stress] [--subjects 2] [--expressions 1]
        [--seed 7] [--model-seed 0] [--threads 1] [--workers 2] [--init template]

One process, no Ray (`register_scan` on each scan read through its dataset reader, as a Ray task would).
Per (model, vertices, layout, scan setting) it prints one row: scans, accepted, correspondence error over
the face vs truth (median and p95 over all accepted face vertices, and the worst accepted scan's median,
mm), the share of scans with true median <= 1 mm that were accepted and of those > 2 mm that were
rejected, the fitted identity against the truth (median over scans of |fitted - true| / |true| on the
true coefficients' components, and of |fitted| / |true|: below 1 is shrinkage) and seconds per scan.
Then one JSON line with every row. Scans of one row are registered in `--workers` processes (each with
`--threads` torch threads), as Ray tasks would be.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from p3dmm.flame.files import load_assets
from p3dmm.flame.synth import write_synthetic_flame
from p3dmm.pipeline.datasets import reader, reader_options, write_synthetic
from p3dmm.pipeline.report.registration_eval import correspondence_errors_mm
from p3dmm.pipeline.synth.scans import read_truth
from p3dmm.registration.config import RegistrationConfig
from p3dmm.registration.register import register_scan


def flame_model(folder: Path, vertices: int, identity: str, seed: int) -> Path:
    """A synthetic FLAME-format model: `identity` "easy" (the project's narrow default) or "flame" (real
    FLAME's identity spread)."""
    write_synthetic_flame(folder, n_vertices=vertices, seed=seed, identity=identity)
    return folder


def scans(root: Path, layout: str, assets, setting: str, subjects: int, expressions: int, seed: int) -> Path:
    write_synthetic(layout, root, assets, subjects=subjects, expressions=expressions, seed=seed,
                    stress=setting == "stress")
    return root


def register_one(task: tuple) -> dict:
    """Register one scan of a synthetic dataset and compare it with its truth (runs in a worker)."""
    root, layout, flame_dir, record, threads, init = task
    torch.set_num_threads(threads)
    assets = load_assets(flame_dir)
    start = time.perf_counter()
    reg = register_scan(reader(layout).load_scan(record), assets, RegistrationConfig(init=init))
    seconds = time.perf_counter() - start
    truth = read_truth(root, record.scan_id)
    errors = correspondence_errors_mm(reg.vertices, truth["vertices"], assets.masks["face"],
                                      float(truth["metres_per_unit"]))
    true_shape = truth["shape"]
    used = np.nonzero(true_shape)[0]
    fitted = np.zeros_like(true_shape)
    n = min(len(true_shape), len(reg.params["shape"]))
    fitted[:n] = np.asarray(reg.params["shape"])[:n]
    norm = np.linalg.norm(true_shape[used])
    return {"scan": record.scan_id, "accepted": reg.accepted, "reason": reg.reason,
            "median_mm": float(np.median(errors)), "errors": errors, "seconds": seconds,
            "shape_rel_error": float(np.linalg.norm(fitted[used] - true_shape[used]) / norm),
            "shape_norm_ratio": float(np.linalg.norm(fitted[used]) / norm),
            "metrics": {k: v for k, v in reg.metrics.items() if isinstance(v, float)}}


def evaluate_layout(root: Path, layout: str, flame_dir: Path, pool, threads: int, init: str) -> dict:
    """Register every scan of a synthetic dataset (in `pool`) and compare with its truth."""
    records = list(reader(layout).iter_records(root, **reader_options(layout, {}, root)))
    rows = pool.map(register_one, [(root, layout, flame_dir, r, threads, init) for r in records])
    return summarise(rows)


def summarise(rows: list[dict]) -> dict:
    accepted = [r for r in rows if r["accepted"]]
    pooled = np.concatenate([r["errors"] for r in accepted]) if accepted else np.array([np.nan])
    good = [r for r in rows if r["median_mm"] <= 1.0]
    bad = [r for r in rows if r["median_mm"] > 2.0]
    return {
        "scans": len(rows), "accepted": len(accepted),
        "median_mm": float(np.median(pooled)), "p95_mm": float(np.quantile(pooled, 0.95)),
        "worst_accepted_median_mm": max((r["median_mm"] for r in accepted), default=float("nan")),
        "all_scan_medians_mm": [round(r["median_mm"], 3) for r in rows],
        "good_accepted": f"{sum(r['accepted'] for r in good)}/{len(good)}",
        "bad_rejected": f"{sum(not r['accepted'] for r in bad)}/{len(bad)}",
        "shape_rel_error": float(np.median([r["shape_rel_error"] for r in rows])),
        "shape_norm_ratio": float(np.median([r["shape_norm_ratio"] for r in rows])),
        "seconds_per_scan": float(np.mean([r["seconds"] for r in rows])),
        "reasons": sorted({r["reason"].split(":")[0] for r in rows if r["reason"]}),
        "scan_rows": [{k: v for k, v in r.items() if k != "errors"} for r in rows],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", nargs="+", default=["nphm", "facescape", "generic", "facescape-mview", "ava256"])
    ap.add_argument("--vertices", nargs="+", type=int, default=[1000, 2000, 5023])
    ap.add_argument("--identity", nargs="+", default=["easy", "flame"])
    ap.add_argument("--scans", nargs="+", default=["easy", "stress"])
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--expressions", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7, help="seed of the synthetic scans")
    ap.add_argument("--model-seed", type=int, default=0,
                    help="seed of the synthetic FLAME models (another seed: models the defaults were never tuned on)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--init", default="template", help="RegistrationConfig.init: template or dataset")
    args = ap.parse_args()
    results = []
    print("model  vertices layout     scans  n acc  median  p95   worst  good-acc bad-rej shape-err |f|/|t|  s/scan")
    with tempfile.TemporaryDirectory() as tmp, multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for identity in args.identity:
            for vertices in args.vertices:
                folder = flame_model(Path(tmp) / f"flame-{identity}-{vertices}", vertices, identity, seed=args.model_seed)
                assets = load_assets(folder)
                for layout in args.layouts:
                    for setting in args.scans:
                        root = scans(Path(tmp) / f"{identity}-{vertices}-{layout}-{setting}", layout, assets, setting,
                                     args.subjects, args.expressions, args.seed)
                        row = {"identity": identity, "vertices": vertices, "layout": layout, "scans_setting": setting,
                               **evaluate_layout(root, layout, folder, pool, args.threads, args.init)}
                        results.append(row)
                        print(f"{identity:6s} {vertices:8d} {layout:10s} {setting:6s} {row['scans']:2d} {row['accepted']:3d} "
                              f"{row['median_mm']:7.3f} {row['p95_mm']:6.3f} {row['worst_accepted_median_mm']:6.3f} "
                              f"{row['good_accepted']:>8s} {row['bad_rejected']:>7s} {row['shape_rel_error']:8.3f} "
                              f"{row['shape_norm_ratio']:7.3f} {row['seconds_per_scan']:7.1f}  {row['reasons']}",
                              flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
