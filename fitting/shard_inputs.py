"""Held-out shard samples as fitting inputs with ground truth: images, meshes and subjects.

`p3dmm fit --shards DIR --split val` fits the views of the validation subjects (never seen in training).
Each sample's photo (`rgb.jpg`, as stored) becomes `OUT/inputs/images/<key>.jpg`; its ground truth goes to
`OUT/inputs/gt/`: `<key>.posed.ply` is the registered mesh the targets were rendered from (FLAME topology, and
the FLAME frame the targets and cameras are in, not the scan's), `<key>.neutral.ply` is FLAME with the
registration's shape only (its identity, zero expression and pose).
`subjects.json` maps every image to its subject for the multi-image (shared identity) mode. Everything is
written under temporary names and renamed, and an existing export is reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.mesh import save_mesh
from p3dmm.pipeline.registered import load_registered
from p3dmm.pipeline.shards.reader import iter_samples, read_index, shard_paths


def _registered_paths(shards: Path) -> dict[str, str]:
    """{sample key: registration .npz} from the render plan ({} for shards rendered straight from FLAME)."""
    plan_file = shards / "plan.json"
    if not plan_file.is_file():
        return {}
    plan = json.loads(plan_file.read_text())
    return {s["key"]: s["registered"] for shard in plan["shards"] for s in shard["samples"]}


def _truth(flame, meta: dict, npz_path: str | None, key: str, shards: Path) -> tuple[np.ndarray, np.ndarray]:
    """(posed, neutral) FLAME-frame vertices: the registered mesh when the plan names one (it carries the
    registration's offsets), else FLAME of the sample's parameters; neutral is FLAME of the shape alone."""
    params = meta.get("flame")
    if not params or "shape" not in params:
        raise ValueError(f"{shards}: sample {key} has no FLAME parameters in meta.json")

    def coefficients(name: str, width: int) -> torch.Tensor:
        value = torch.tensor(params.get(name, []), dtype=torch.float32).reshape(1, -1)[:, :width]
        return torch.nn.functional.pad(value, (0, width - value.shape[1]))

    shape = coefficients("shape", flame.n_shape)
    with torch.no_grad():
        neutral = flame(shape=shape).vertices[0].double().numpy()
        if npz_path is None:
            posed = flame(shape=shape, expression=coefficients("expression", flame.n_expression),
                          pose=coefficients("pose", 15), translation=coefficients("translation", 3)
                          ).vertices[0].double().numpy()
            return posed, neutral
    if not Path(npz_path).is_file():
        raise FileNotFoundError(f"{shards}: registered mesh of sample {key} not found ({npz_path})")
    posed = load_registered(npz_path).vertices  # FLAME frame, as the targets and cameras (never the scan's)
    if len(posed) != len(neutral):
        raise ValueError(f"{npz_path}: {len(posed)} vertices, the FLAME model has {len(neutral)} "
                         "(shards rendered with another FLAME?)")
    return posed, neutral


def export_split(shards: str | os.PathLike, split: str, out: str | os.PathLike, flame_dir: str | os.PathLike,
                 limit: int | None = None) -> tuple[Path, Path, Path]:
    """Write the images, ground truth and subject table of one split; return (images, gt, subjects.json)."""
    from p3dmm.flame.files import load_assets
    from p3dmm.flame.model import FLAME

    shards, out = Path(shards), Path(out)
    images, gt, subjects_file = out / "images", out / "gt", out / "subjects.json"
    if subjects_file.is_file():  # written last: the export is complete
        return images, gt, subjects_file
    read_index(shards)
    paths = shard_paths(shards, split)
    if not paths:
        raise ValueError(f"{shards}: no shards of split {split!r}")
    registered = _registered_paths(shards)
    assets = load_assets(flame_dir)
    flame = FLAME(assets)
    faces = assets.model.faces
    images.mkdir(parents=True, exist_ok=True)
    gt.mkdir(parents=True, exist_ok=True)
    subjects: dict[str, str] = {}
    photos = _raw_photos(paths)
    for sample in iter_samples(paths, depth=False):
        if limit is not None and len(subjects) >= limit:
            break
        key, meta = sample.key, sample.meta
        if key not in photos:
            continue
        posed, neutral = _truth(flame, meta, registered.get(key), key, shards)
        save_mesh(gt / f"{key}.posed.ply", posed, faces)
        save_mesh(gt / f"{key}.neutral.ply", neutral, faces)
        atomic_write(images / f"{key}.jpg", photos[key])  # the stored JPEG bytes: no second compression
        subjects[key] = meta["subject"]
    if not subjects:
        raise ValueError(f"{shards}: split {split!r} has no readable samples")
    atomic_write(subjects_file, (json.dumps(subjects, indent=1) + "\n").encode())
    return images, gt, subjects_file


def _raw_photos(paths: list[str]) -> dict[str, bytes]:
    """{sample key: rgb.jpg bytes as stored} of the shards (unreadable members are skipped by the reader)."""
    import tarfile

    photos = {}
    for path in paths:
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.name.endswith(".rgb.jpg"):
                        photos[member.name[: -len(".rgb.jpg")]] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError):
            continue  # truncated shard: iter_samples warns about it and yields what is readable
    return photos
