"""`p3dmm fit`: images -> priors -> batched FLAME fits, on one machine or Ray actors, resumable.

Thin orchestration only (the maths is fitting.priors / correspondences / fit). Bad images are recorded
with their reason and skipped; a rerun skips images already finished (and images that failed, unless
their file changed).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from p3dmm.fitting.fit import FitConfig, fit_batch
from p3dmm.fitting.inputs import ImageError, image_id, list_images, load_image, read_boxes
from p3dmm.pipeline.manifest import Manifest


@dataclass
class FitSummary:
    total: int
    skipped: int
    fitted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"{self.total} images: {self.skipped} already fitted, {self.fitted} fitted, {len(self.failed)} failed "
               f"in {self.seconds:.1f} s"]
        out += [f"  failed {name}: {reason}" for name, reason in self.failed]
        return out


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _finished(manifest: Manifest, name: str, path: Path) -> bool:
    """Fitted, or failed on this very file (a replaced file is tried again)."""
    entry = manifest.entries.get(name)
    if entry is None:
        return False
    return entry.get("status") == "ok" or (entry.get("status") == "failed" and entry.get("file") == _stat(path))


class FitWorker:
    """Holds the networks and FLAME once and fits batches of images; used in-process or as a Ray actor."""

    def __init__(self, priors: str, flame_dir: str, out: str, root: str, config: FitConfig,
                 boxes: dict[str, list[float]], device: str | None = None):
        from p3dmm.fitting.synthetic import fit_inputs
        from p3dmm.flame.files import load_assets
        from p3dmm.flame.model import FLAME
        from p3dmm.training.data import mirror_axis_of
        from p3dmm.training.export import load_priors

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = load_priors(priors, map_location=self.device)
        if set(self.net.config.outputs) != {"normal", "uv"}:
            raise ValueError(f"{priors}: fitting needs a network with normal and uv outputs, has {self.net.config.outputs}")
        self.assets = load_assets(flame_dir)
        self.flame = FLAME(self.assets).to(self.device)
        self.uv_axis = mirror_axis_of(flame_dir)
        self.fit_vertices, self.vertex_uv, self.mirror = fit_inputs(self.assets)
        self.out, self.root, self.config, self.boxes = Path(out), Path(root), config, boxes
        self.load_size = max(self.net.config.input_size, config.raster_size)

    def fit(self, paths: list[str]) -> list[dict]:
        """Manifest entries ({"id", "status", "reason", ...}) for a batch of image paths; outputs written."""
        from p3dmm.fitting.outputs import write_outputs
        from p3dmm.fitting.priors import predict

        entries, images_np, names = [], [], []
        for path in map(Path, paths):
            name = image_id(path, self.root)
            box = self.boxes.get(str(path.relative_to(self.root))) or self.boxes.get(path.name)
            try:
                images_np.append(load_image(path, self.load_size, box))
                names.append(name)
            except ImageError as e:
                entries.append({"id": name, "status": "failed", "reason": str(e), "file": _stat(path)})
        if names:
            batch = torch.from_numpy(np.stack(images_np)).permute(0, 3, 1, 2).float().div(255.0)
            pred = predict(self.net, batch, uv_axis=self.uv_axis)
            result = fit_batch(self.flame, pred, self.fit_vertices, self.vertex_uv, self.mirror, self.config)
            for b, name in enumerate(names):
                normal = pred["normal"][b].permute(1, 2, 0).cpu().numpy()
                write_outputs(self.out, name, result, b, self.assets.model.faces, images_np[b], normal,
                              self.config.raster_size)
                entries.append({"id": name, "status": "ok", "reason": None, "losses": result.losses})
        return entries


def fit_images(images: str | os.PathLike, priors: str | os.PathLike, flame_dir: str | os.PathLike,
               out: str | os.PathLike, *, batch_size: int = 8, config: FitConfig | None = None,
               boxes: str | os.PathLike | None = None, device: str | None = None, progress: bool = True,
               address: str | None = None, num_cpus: int | None = None, workers: int | None = None) -> FitSummary:
    """Fit every image under `images` not finished yet. Local by default; with `address` (or `workers`), Ray
    actors that each hold the networks (one GPU each when the cluster has GPUs, else CPUs) fit batches."""
    from tqdm import tqdm

    config = config or FitConfig()
    root, out = Path(images), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = list_images(root)
    box_table = read_boxes(boxes)
    manifest = Manifest(out / "manifest.jsonl")
    todo = [p for p in paths if not _finished(manifest, image_id(p, root), p)]
    summary = FitSummary(total=len(paths), skipped=len(paths) - len(todo))
    for path in paths:  # failures of earlier runs stay on the list until the image file changes
        entry = manifest.entries.get(image_id(path, root))
        if entry is not None and entry.get("status") == "failed" and path not in todo:
            summary.failed.append((entry["id"], f"{entry.get('reason')} (earlier run)"))
    if not todo:
        return summary
    batches = [[str(p) for p in todo[i : i + batch_size]] for i in range(0, len(todo), batch_size)]
    args = (str(priors), str(flame_dir), str(out), str(root), config, box_table)
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="fit", unit="img", disable=not progress, file=sys.stderr)

    def record(entries: list[dict]) -> None:
        for entry in entries:
            manifest.append(entry)
            if entry["status"] == "ok":
                summary.fitted += 1
            else:
                summary.failed.append((entry["id"], entry["reason"]))
            bar.update(1)

    try:
        if address is None and workers is None:
            worker = FitWorker(*args, device=device)
            for batch in batches:
                record(worker.fit(batch))
        else:
            _fit_with_ray(batches, args, record, address, num_cpus, workers)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _fit_with_ray(batches: list[list[str]], args: tuple, record, address: str | None, num_cpus: int | None,
                  workers: int | None) -> None:
    import ray

    from p3dmm.pipeline.jobs import init_ray

    started = init_ray(address, num_cpus)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = workers or max(1, gpus or int(ray.cluster_resources().get("CPU", 1)) // 2)
        actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1 if gpus else 2, max_restarts=2,
                           max_task_retries=2)(FitWorker)
        pool = ray.util.ActorPool([actor.remote(*args) for _ in range(min(count, len(batches)))])
        for entries in pool.map_unordered(lambda a, batch: a.fit.remote(batch), batches):
            record(entries)  # the manifest grows as batches land: a crash loses only batches in flight
    finally:
        if started:
            ray.shutdown()
