"""Registration from three starts on the same synthetic stress scans: FLAME's mean head (the plain start),
the dataset's own rough FLAME fit (`--init dataset`) and landmarks detected on renders (`--landmarks detect`).

    .venv/bin/python bench/registration_init.py [--vertices 1000] [--identity flame] [--subjects 2]
        [--expressions 1] [--seed 7] [--threads 1] [--easy]

NPHM layout: its reader gives the shipped flame.ply as `init_vertices` (synthetic: the truth's parameters
with RoughFit noise, docs/datasets.md) and no landmarks, so all three starts apply to every scan. One
process, no Ray (`register_scan` on each scan read through the reader, as a Ray task would). Per start it
prints one row: scans, accepted, correspondence error over the face vs truth (median and p95 over the
accepted scans' face vertices, then over all scans'), the worst scan median, seconds per scan (detection
included). Two rows measure the starts themselves: flame.ply against the truth, and the detected points
against the truth's (eye centres = contour means). Then one JSON line with every row.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from p3dmm.fitting.detect import FaceDetector
from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.files import load_assets
from p3dmm.flame.landmarks import five_point_landmarks
from p3dmm.flame.scan import ScanGeometry
from p3dmm.flame.synth import write_synthetic_flame
from p3dmm.pipeline.datasets import reader, write_synthetic
from p3dmm.pipeline.jobs.scan_landmarks import DETECTOR_ROWS, with_landmarks
from p3dmm.pipeline.report.registration_eval import correspondence_errors_mm
from p3dmm.pipeline.synth.scans import read_truth
from p3dmm.registration.config import RegistrationConfig
from p3dmm.registration.register import register_scan

STARTS = ("template", "dataset", "landmarks")


@dataclass
class Outcome:
    """One registration of one scan from one start."""

    start: str
    scan: str
    accepted: bool
    reason: str | None
    errors: np.ndarray
    seconds: float


def register_from(start: str, scan: ScanGeometry, assets: FlameAssets, detector: FaceDetector) -> tuple:
    """(registration, seconds, note) of `scan` from `start`; detection time counts towards the landmark start."""
    began = time.perf_counter()
    note = None
    if start == "landmarks":
        scan, note = with_landmarks(scan, detector)
    config = RegistrationConfig(init="dataset" if start == "dataset" else "template")
    return register_scan(scan, assets, config), time.perf_counter() - began, note


def start_errors(scan: ScanGeometry, truth: dict, assets: FlameAssets, detector: FaceDetector) -> dict:
    """How good the starts are before any registration: flame.ply and the detected points against the truth (mm)."""
    face = assets.masks["face"]
    scale = float(truth["metres_per_unit"])
    out = {"init_mm": correspondence_errors_mm(scan.init_vertices, truth["vertices"], face, scale)}
    found, note = with_landmarks(scan, detector)
    expected = five_point_landmarks(truth["landmarks"])
    if found.landmarks is not None:
        rows = list(DETECTOR_ROWS)
        out["landmarks_mm"] = np.linalg.norm(found.landmarks[rows] - expected[rows], axis=1) * scale * 1000.0
    out["landmarks_note"] = note
    return out


def summarise(outcomes: list[Outcome]) -> dict:
    """Pooled face errors of the accepted scans and of all scans, acceptance and time of one start."""
    accepted = [o for o in outcomes if o.accepted]
    pooled = np.concatenate([o.errors for o in accepted]) if accepted else np.array([np.nan])
    every = np.concatenate([o.errors for o in outcomes])
    return {
        "scans": len(outcomes), "accepted": len(accepted),
        "median_mm": float(np.median(pooled)), "p95_mm": float(np.quantile(pooled, 0.95)),
        "all_median_mm": float(np.median(every)), "all_p95_mm": float(np.quantile(every, 0.95)),
        "worst_median_mm": max(float(np.median(o.errors)) for o in outcomes),
        "seconds_per_scan": float(np.mean([o.seconds for o in outcomes])),
        "scan_medians_mm": [round(float(np.median(o.errors)), 2) for o in outcomes],
        "reasons": sorted({o.reason.split(":")[0] for o in outcomes if o.reason}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vertices", type=int, default=1000)
    ap.add_argument("--identity", default="flame", choices=("easy", "flame"))
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--expressions", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (2 on 2 busy cores made one registration take 2-29 s, not a steady 4 s)")
    ap.add_argument("--easy", action="store_true", help="the easy synthetic scans instead of the stress ones")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    detector = FaceDetector()
    outcomes: dict[str, list[Outcome]] = {s: [] for s in STARTS}
    init_mm, landmark_mm, notes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_flame(Path(tmp) / "flame", n_vertices=args.vertices, seed=0, identity=args.identity)
        assets = load_assets(Path(tmp) / "flame")
        root = Path(tmp) / "nphm"
        write_synthetic("nphm", root, assets, subjects=args.subjects, expressions=args.expressions,
                        seed=args.seed, stress=not args.easy)
        module = reader("nphm")
        for record in module.iter_records(root):
            scan = module.load_scan(record)
            truth = read_truth(root, record.scan_id)
            starts = start_errors(scan, truth, assets, detector)
            init_mm.append(starts["init_mm"])
            landmark_mm.append(starts.get("landmarks_mm", np.full(len(DETECTOR_ROWS), np.nan)))
            notes.append(f"{record.scan_id}: {starts['landmarks_note']}")
            for start in STARTS:
                reg, seconds, _ = register_from(start, scan, assets, detector)
                errors = correspondence_errors_mm(reg.vertices, truth["vertices"], assets.masks["face"],
                                                  float(truth["metres_per_unit"]))
                outcomes[start].append(Outcome(start, record.scan_id, reg.accepted, reg.reason, errors, seconds))
                print(f"  {record.scan_id} {start:9s} accepted={reg.accepted!s:5s} median "
                      f"{np.median(errors):6.2f} mm  {seconds:5.1f} s  {reg.reason or ''}", flush=True)
    rows = [{"start": s, **summarise(outcomes[s])} for s in STARTS]
    print(f"\n{args.identity} FLAME, {args.vertices} vertices, nphm {'easy' if args.easy else 'stress'} scans, "
          f"seed {args.seed}")
    print("start      scans acc  median   p95 | all: median   p95 | worst  s/scan")
    for r in rows:
        print(f"{r['start']:10s} {r['scans']:5d} {r['accepted']:3d} {r['median_mm']:7.2f} {r['p95_mm']:5.2f} |"
              f"      {r['all_median_mm']:7.2f} {r['all_p95_mm']:5.2f} | {r['worst_median_mm']:6.2f} "
              f"{r['seconds_per_scan']:6.1f}  {r['reasons']}")
    pooled_init = np.concatenate(init_mm)
    points = np.asarray(landmark_mm)
    print(f"flame.ply vs truth over the face: median {np.median(pooled_init):.2f} mm, "
          f"p95 {np.quantile(pooled_init, 0.95):.2f} mm")
    print("detected points vs truth, median mm (right eye, left eye, nose tip, mouth 48, mouth 54): "
          f"{np.round(np.nanmedian(points, axis=0), 1).tolist()}")
    for note in notes:
        print(f"  {note}")
    print(json.dumps({"rows": rows, "init_median_mm": float(np.median(pooled_init)),
                      "landmark_median_mm": np.nanmedian(points, axis=0).tolist(), "notes": notes}))


if __name__ == "__main__":
    main()
