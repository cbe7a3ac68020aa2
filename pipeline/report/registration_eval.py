"""Registration against synthetic ground truth: per-vertex correspondence error over the face region."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from p3dmm.flame.atomic import atomic_write
from p3dmm.pipeline.registered import load_registered


def correspondence_errors_mm(pred: np.ndarray, truth: np.ndarray, face: np.ndarray, metres_per_unit: float) -> np.ndarray:
    """(len(face),) distances in mm between same-index vertices of two FLAME-topology meshes."""
    return np.linalg.norm(pred[face] - truth[face], axis=1) * metres_per_unit * 1000.0


def evaluate_registrations(out: str | os.PathLike, truth_root: str | os.PathLike) -> dict:
    from p3dmm.flame.files import load_assets

    out, truth_root = Path(out), Path(truth_root)
    job = json.loads((out / "job.json").read_text())
    face = load_assets(job["flame_dir"]).masks["face"]
    per_scan, pooled = {}, []
    for path in sorted((out / "registered").glob("*.npz")):
        truth_path = truth_root / "_truth" / path.name
        if not truth_path.exists():
            continue
        pred = load_registered(path)
        with np.load(truth_path, allow_pickle=False) as truth:  # truth is in the scan's frame and units
            errors = correspondence_errors_mm(pred.scan_vertices, truth["vertices"], face,
                                              float(truth["metres_per_unit"]))
        per_scan[pred.scan_id] = {"median_mm": float(np.median(errors)), "p95_mm": float(np.percentile(errors, 95)),
                                  "accepted": pred.accepted}
        if pred.accepted:
            pooled.append(errors)
    all_errors = np.concatenate(pooled) if pooled else np.array([np.nan])
    accepted_medians = [s["median_mm"] for s in per_scan.values() if s["accepted"]]
    overall = {
        "scans": len(per_scan),
        "accepted": sum(s["accepted"] for s in per_scan.values()),
        "accepted_fraction": (sum(s["accepted"] for s in per_scan.values()) / len(per_scan)) if per_scan else 0.0,
        "median_mm": float(np.median(all_errors)),
        "p95_mm": float(np.percentile(all_errors, 95)),
        "worst_accepted_median_mm": float(max(accepted_medians)) if accepted_medians else float("nan"),
    }
    result = {"overall": overall, "scans": per_scan}
    atomic_write(out / "eval.json", (json.dumps(result, indent=2) + "\n").encode())
    return result
