"""Small shard folders rendered straight from a FLAME model (no scans, no registration) for tests and
benchmarks of the training stage. Same schema and index.json as `p3dmm render` writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.files import load_assets
from p3dmm.flame.render import RayCaster, shade
from p3dmm.flame.rotations import head_rotation
from p3dmm.pipeline.render.targets import render_targets, uv_region_faces
from p3dmm.pipeline.render.views import sample_views
from p3dmm.pipeline.shards.format import encode_flags, encode_sample
from p3dmm.pipeline.shards.writer import write_shard
from p3dmm.pipeline.synth.scans import posed_truth, sample_params, skin_colors


def write_flame_shards(out: str | os.PathLike, flame_dir: str | os.PathLike, *, train_subjects: int = 3,
                       val_subjects: int = 1, views: int = 4, size: int = 32, samples_per_shard: int = 4,
                       seed: int = 0, dataset: str = "generic") -> dict:
    """Render `views` samples of one random FLAME head per subject into train/val shards; returns the index."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    assets = load_assets(flame_dir)
    faces = assets.model.faces
    region = uv_region_faces(assets)
    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": []}
    for s in range(train_subjects + val_subjects):
        split = "train" if s < train_subjects else "val"
        params = sample_params(rng, assets.model.num_shape, assets.model.num_expression)
        verts = posed_truth(assets, params)
        head = head_rotation(torch.tensor(params["pose"])).numpy()
        points = verts[np.unique(faces[region])]
        cams, _ = sample_views(rng, views, points.mean(0), head, float(np.ptp(points, axis=0).max()), size)
        caster = RayCaster(verts, faces)
        colors = skin_colors(assets, verts, rng)
        for v in range(views):
            cam = cams[v]
            t = render_targets(caster, cam, head, assets.uv.vt, assets.uv.ft, region)
            hits = caster.cast(cam)
            background = tuple(int(c) for c in rng.integers(0, 256, 3))
            rgb = shade(hits, verts, faces, vertex_colors=colors, background=background)
            key = f"{dataset}__s{s:03d}_r{v:02d}"
            meta = {"key": key, "scan_id": f"{dataset}/s{s:03d}", "dataset": dataset, "subject": f"{dataset}/s{s:03d}",
                    "split": split, "kind": "render", "index": v,
                    "camera": {"K": cam.K[0].tolist(), "R": cam.R[0].tolist(), "t": cam.t[0].tolist(), "size": [size, size]},
                    "flame": {k: np.asarray(params[k]).tolist() for k in ("shape", "expression", "pose", "translation")}}
            splits[split].append((key, encode_sample(key, rgb, t.normal, t.uv, encode_flags(t.mask, t.face_mask),
                                                     t.depth, meta), meta["subject"]))
    index = {"schema_version": 1, "size": size, "flame_dir": str(Path(flame_dir).resolve()), "config": {"synthetic": True},
             "shards": {}, "splits": {}, "complete": True}
    for split, samples in splits.items():
        n = 0
        for i in range(0, len(samples), samples_per_shard):
            name = f"{split}-{i // samples_per_shard:06d}.tar"
            entry = write_shard(out / name, ((k, m) for k, m, _ in samples[i : i + samples_per_shard]))
            index["shards"][name] = {"split": split, **entry}
            n += 1
        index["splits"][split] = {"shards": n, "samples": len(samples), "subjects": sorted({s for *_, s in samples})}
    atomic_write(out / "index.json", (json.dumps(index, indent=1) + "\n").encode())
    return index
