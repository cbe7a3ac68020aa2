"""`p3dmm fit`: images -> priors -> batched FLAME fits, on one machine or Ray actors, resumable.

Thin orchestration only (the maths is fitting.priors / correspondences / fit). Bad images are recorded
with their reason and skipped; a rerun skips images already finished (and images that failed, unless
their file changed).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from p3dmm.fitting.fit import FitConfig, fit_batch
from p3dmm.fitting.inputs import ImageError, image_id, list_images, load_image, read_boxes
from p3dmm.pipeline.jobs.manifest import Manifest


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
                 boxes: dict[str, list[float]], detect: bool = False, device: str | None = None):
        from p3dmm.fitting.correspondences import fit_inputs
        from p3dmm.flame.files import load_assets
        from p3dmm.flame.mirror import mirror_axis_of
        from p3dmm.flame.model import FLAME
        from p3dmm.training.export import load_priors

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = load_priors(priors, map_location=self.device)
        if set(self.net.config.outputs) != {"normal", "uv"}:
            raise ValueError(f"{priors}: fitting needs a network with normal and uv outputs, has {self.net.config.outputs}")
        self.assets = load_assets(flame_dir)
        n_shape = min(config.n_shape, self.assets.model.num_shape) if config.fit_shape else 0
        n_expression = min(config.n_expression, self.assets.model.num_expression)
        # only the fitted components: the blend shapes of the rest would cost time for zeros
        self.flame = FLAME(self.assets, n_shape=n_shape, n_expression=n_expression).to(self.device)
        self.uv_axis = mirror_axis_of(flame_dir)
        self.fit_vertices, self.vertex_uv, self.mirror = fit_inputs(self.assets)
        self.out, self.root, self.config, self.boxes = Path(out), Path(root), config, boxes
        self.load_size = max(self.net.config.input_size, config.raster_size)
        self.detector = None
        if detect:
            from p3dmm.fitting.detect import FaceDetector

            self.detector = FaceDetector()

    def fit(self, paths: list[str], subjects: list[str] | None = None) -> list[dict]:
        """Manifest entries ({"id", "status", "reason", ...}) for a batch of image paths; outputs written.
        Images with the same `subjects` label share one shape (multi-image mode)."""
        from p3dmm.fitting.outputs import write_outputs
        from p3dmm.fitting.priors import predict

        entries, images_np, names, labels = [], [], [], []
        for i, path in enumerate(map(Path, paths)):
            name = image_id(path, self.root)
            box = self.boxes.get(str(path.relative_to(self.root))) or self.boxes.get(path.name)
            try:
                images_np.append(load_image(path, self.load_size, box, self.detector))
                names.append(name)
                labels.append(subjects[i] if subjects else name)
            except ImageError as e:
                entries.append({"id": name, "status": "failed", "reason": str(e), "file": _stat(path)})
        if names:
            batch = torch.from_numpy(np.stack(images_np)).permute(0, 3, 1, 2).float().div(255.0)
            pred = predict(self.net, batch, uv_axis=self.uv_axis)
            order = {label: k for k, label in enumerate(dict.fromkeys(labels))}
            subject_index = torch.tensor([order[label] for label in labels])
            result = fit_batch(self.flame, pred, self.fit_vertices, self.vertex_uv, self.mirror, self.config,
                               subject_index=subject_index)
            for b, name in enumerate(names):
                normal = pred["normal"][b].float().permute(1, 2, 0).cpu().numpy()
                uv = pred["uv"][b].float().permute(1, 2, 0).cpu().numpy()
                write_outputs(self.out, name, result, b, self.assets.model.faces, images_np[b], normal,
                              self.config.raster_size, pred_uv=uv)
                entries.append({"id": name, "status": "ok", "reason": None, "subject": labels[b],
                                "losses": result.losses})
        return entries


def fit_images(images: str | os.PathLike, priors: str | os.PathLike, flame_dir: str | os.PathLike,
               out: str | os.PathLike, *, batch_size: int = 8, config: FitConfig | None = None,
               boxes: str | os.PathLike | None = None, device: str | None = None, progress: bool = True,
               address: str | None = None, num_cpus: int | None = None, workers: int | None = None,
               subjects: str | os.PathLike | None = None, detect: bool = False) -> FitSummary:
    """Fit every image under `images` not finished yet. Local by default; with `address` (or `workers`), Ray
    actors that each hold the networks (one GPU each when the cluster has GPUs, else CPUs) fit batches.
    With `subjects` ("folder": one subject per subfolder, or a JSON {image: subject}) the images of a subject
    are fitted in one batch with one shared shape."""
    from tqdm import tqdm

    config = config or FitConfig()
    # absolute paths: Ray actors on other nodes (or in another working folder) read and write them
    root, out = Path(images).resolve(), Path(out).resolve()
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
    labels = subject_labels(todo, root, subjects)
    batches = pack_batches(todo, labels, batch_size)
    args = (str(Path(priors).resolve()), str(Path(flame_dir).resolve()), str(out), str(root), config, box_table, detect)
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
                record(worker.fit(*batch))
        else:
            _fit_with_ray(batches, args, record, address, num_cpus, workers)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def fit_shards(shards: str | os.PathLike, split: str, priors: str | os.PathLike, flame_dir: str | os.PathLike,
               out: str | os.PathLike, *, limit: int | None = None, **options) -> FitSummary:
    """Fit the views of one shard split: they are exported with their ground truth to OUT/inputs (images/,
    gt/ for evaluation, subjects.json), then fitted like any image folder (`fit_images` options)."""
    from p3dmm.fitting.shard_inputs import export_split

    images, _, _ = export_split(shards, split, Path(out) / "inputs", flame_dir, limit=limit)
    return fit_images(images, priors, flame_dir, out, **options)


def subject_labels(paths: list[Path], root: Path, subjects: str | os.PathLike | None) -> list[str] | None:
    """Subject of every image: its subfolder ("folder"), or looked up in a JSON {image: subject} by image id,
    relative path or file name. None: every image is its own subject."""
    if subjects is None:
        return None
    if str(subjects) == "folder":
        return [str(p.parent.relative_to(root)) for p in paths]
    try:
        table = json.loads(Path(subjects).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{subjects}: cannot read the subject table ({e})") from None
    labels = []
    for p in paths:
        keys = (image_id(p, root), str(p.relative_to(root)), p.name, p.stem)
        label = next((table[k] for k in keys if k in table), None)
        if label is None:
            raise ValueError(f"{subjects}: no subject for image {p.relative_to(root)}")
        labels.append(str(label))
    return labels


def pack_batches(paths: list[Path], labels: list[str] | None, batch_size: int) -> list[tuple[list[str], list[str] | None]]:
    """Batches of (paths, subject labels): with subjects, all images of a subject land in one batch (a subject
    with more images than `batch_size` gets a batch of its own)."""
    if labels is None:
        return [([str(p) for p in paths[i : i + batch_size]], None) for i in range(0, len(paths), batch_size)]
    groups: dict[str, list[str]] = {}
    for path, label in zip(paths, labels, strict=True):
        groups.setdefault(label, []).append(str(path))
    batches: list[tuple[list[str], list[str]]] = []
    for label, group in groups.items():
        if batches and len(batches[-1][0]) + len(group) <= batch_size:
            batches[-1][0].extend(group)
            batches[-1][1].extend([label] * len(group))
        else:
            batches.append((list(group), [label] * len(group)))
    return batches


def _fit_with_ray(batches: list[tuple[list[str], list[str] | None]], args: tuple, record, address: str | None, num_cpus: int | None,
                  workers: int | None) -> None:
    import ray

    from p3dmm.pipeline.jobs.runner import init_ray

    started = init_ray(address, num_cpus)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = workers or max(1, gpus or int(ray.cluster_resources().get("CPU", 1)) // 2)
        actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1 if gpus else 2, max_restarts=2,
                           max_task_retries=2)(FitWorker)
        pool = ray.util.ActorPool([actor.remote(*args) for _ in range(min(count, len(batches)))])
        for entries in pool.map_unordered(lambda a, batch: a.fit.remote(*batch), batches):
            record(entries)  # the manifest grows as batches land: a crash loses only batches in flight
    finally:
        if started:
            ray.shutdown()
