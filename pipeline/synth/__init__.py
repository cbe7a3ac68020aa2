"""Synthetic datasets in the real on-disk layouts (one module per layout), built from a FLAME-format
model with :mod:`p3dmm.pipeline.synth.scans`. Each writer also stores ground truth under ``_truth/``."""

from __future__ import annotations

import os
from typing import Any

LAYOUTS = ("nphm", "facescape", "facescape-mview", "ava256", "generic")


def write_layout(layout: str, out: str | os.PathLike, assets: Any, *, subjects: int, expressions: int,
                 seed: int) -> int:
    """Write `subjects` x `expressions` synthetic scans of one layout; returns how many were written."""
    if layout == "nphm":
        from p3dmm.pipeline.synth.nphm import write_nphm

        ids = write_nphm(out, assets, subjects=subjects, expressions=expressions, seed=seed)
    elif layout == "facescape":
        from p3dmm.pipeline.synth.facescape import write_facescape

        ids = write_facescape(out, assets, subjects=subjects, expressions=expressions, seed=seed)
    elif layout == "facescape-mview":
        from p3dmm.pipeline.synth.facescape_mview import write_facescape_mview

        ids = write_facescape_mview(out, assets, list(range(1, subjects + 1)), list(range(1, expressions + 1)),
                                    seed=seed)
    elif layout == "ava256":
        from p3dmm.pipeline.synth.ava256 import write_ava256

        ids = write_ava256(out, assets, [f"SYN{i:03d}" for i in range(subjects)], frames=expressions, seed=seed)
    elif layout == "generic":
        from p3dmm.pipeline.synth.generic import write_generic

        ids = write_generic(out, assets, subjects=subjects, expressions=expressions, seed=seed)
    else:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return len(ids)
