"""The one registry of datasets: each layout's reader, synthetic writer and options.

A reader module yields :class:`~p3dmm.flame.scan.ScanRecord` from a dataset root (`iter_records(root,
**options)`) and loads one as :class:`~p3dmm.flame.scan.ScanGeometry` (`load_scan(record)`); a synthetic
writer (in :mod:`p3dmm.pipeline.synth`) writes scans with ground truth in the same on-disk layout.
Every list of datasets in the project (command-line choices, the registration and render jobs, the
pipeline driver, training's per-dataset metrics) comes from :data:`DATASETS`. Modules are named, not
imported, so listing the datasets costs nothing; they load when a dataset is used.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Dataset:
    """One dataset layout.

    Args:
        name: what configs and the command line call it.
        reader: module with `iter_records(root, **options)` and `load_scan(record)`.
        writer: "module:function" writing `subjects` x `expressions` synthetic scans of the layout with
            ground truth in `_truth/`: `function(out, assets, *, subjects, expressions, seed) -> list[str]`.
        required_options: reader options without a default (the run stops before any work without them).
        synthetic_options: reader option -> path under a synthetic root of the file the writer puts where
            the real dataset keeps it.
        photos: the layout has calibrated photos (real views for the shards).
        stress: its writer has the stress setting (`stress=True`: raw-scan-like, docs/datasets.md).
    """

    name: str
    reader: str
    writer: str
    required_options: tuple[str, ...] = ()
    synthetic_options: dict[str, str] = field(default_factory=dict)
    photos: bool = False
    stress: bool = False


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("nphm", "p3dmm.pipeline.datasets.nphm", "p3dmm.pipeline.synth.nphm:write_nphm", stress=True),
    Dataset("facescape", "p3dmm.pipeline.datasets.facescape", "p3dmm.pipeline.synth.facescape:write_facescape",
            synthetic_options={"landmark_indices": "landmark_indices.npz"}, stress=True),
    Dataset("facescape-mview", "p3dmm.pipeline.datasets.facescape_mview",
            "p3dmm.pipeline.synth.facescape_mview:write_synthetic",
            synthetic_options={"rt_scale_dict": "Rt_scale_dict.json"}, photos=True, stress=True),
    Dataset("ava256", "p3dmm.pipeline.datasets.ava256", "p3dmm.pipeline.synth.ava256:write_synthetic",
            required_options=("topology",), synthetic_options={"topology": "assets/face_topology.obj"},
            photos=True, stress=True),
    Dataset("generic", "p3dmm.pipeline.datasets.generic", "p3dmm.pipeline.synth.generic:write_generic",
            stress=True),
)}
NAMES: tuple[str, ...] = tuple(DATASETS)


def dataset(name: str) -> Dataset:
    """The registry entry of `name`; a ValueError naming the choices when there is none."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from: {', '.join(NAMES)}")
    return DATASETS[name]


def reader(name: str) -> ModuleType:
    """The reader module of dataset `name` (iter_records, load_scan)."""
    return importlib.import_module(dataset(name).reader)


def reader_options(name: str, options: dict[str, Any], root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The reader options of a dataset with, for a synthetic `root`, the side files its writer made;
    a ValueError naming every required option that is still missing."""
    entry = dataset(name)
    if root is not None:
        options = {**{k: str(Path(root) / v) for k, v in entry.synthetic_options.items()}, **options}
    missing = [k for k in entry.required_options if k not in options]
    if missing:
        raise ValueError(f"dataset {name} needs source option(s) {', '.join(missing)} "
                         f"(e.g. --source_options '{{\"{missing[0]}\": ...}}'; see docs/datasets.md)")
    return options


def write_synthetic(name: str, out: str | os.PathLike, assets: Any, *, subjects: int, expressions: int,
                    seed: int, stress: bool = False) -> list[str]:
    """Write `subjects` x `expressions` synthetic scans of dataset `name` with ground truth; their ids.
    `stress`: the hard, raw-scan-like setting (docs/datasets.md, "Stress setting"); a ValueError for a
    layout whose writer has none."""
    entry = dataset(name)
    if stress and not entry.stress:
        raise ValueError(f"dataset {name} has no stress setting of its synthetic scans "
                         f"(those that have: {', '.join(n for n, d in DATASETS.items() if d.stress)})")
    module, function = entry.writer.split(":")
    write = getattr(importlib.import_module(module), function)
    options = {"stress": True} if stress else {}
    return list(write(out, assets, subjects=subjects, expressions=expressions, seed=seed, **options))
