"""`p3dmm fit` on one machine: images -> priors -> batched FLAME fits, resumable through a manifest.

Thin orchestration only (the maths is fitting.priors / correspondences / fit). Bad images are recorded
with their reason and skipped; a rerun skips images already finished. (Ray actors for many machines:
next step, see docs/fitting.md.)
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


def fit_images(images: str | os.PathLike, priors: str | os.PathLike, flame_dir: str | os.PathLike,
               out: str | os.PathLike, *, batch_size: int = 8, config: FitConfig | None = None,
               boxes: str | os.PathLike | None = None, device: str | None = None, progress: bool = True) -> FitSummary:
    from tqdm import tqdm

    from p3dmm.fitting.outputs import write_outputs
    from p3dmm.fitting.priors import predict
    from p3dmm.flame.files import load_assets
    from p3dmm.flame.mirror import mirror_map
    from p3dmm.flame.model import FLAME
    from p3dmm.pipeline.targets import uv_region_faces
    from p3dmm.training.data import mirror_axis_of
    from p3dmm.training.export import load_priors

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
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = load_priors(priors, map_location=device)
    if set(net.config.outputs) != {"normal", "uv"}:
        raise ValueError(f"{priors}: fitting needs a network with both normal and uv outputs, has {net.config.outputs}")
    assets = load_assets(flame_dir)
    flame = FLAME(assets).to(device)
    uv_axis = mirror_axis_of(flame_dir)
    fit_vertices = np.unique(assets.model.faces[uv_region_faces(assets)])
    vertex_uv = np.stack([assets.uv.vertex_uv[:, 0], 1 - assets.uv.vertex_uv[:, 1]], axis=1)
    mirror = mirror_map(assets.model.v_template)
    load_size = max(net.config.input_size, config.raster_size)
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="fit", unit="img", disable=not progress, file=sys.stderr)
    for i in range(0, len(todo), batch_size):
        chunk, images_np, names = todo[i : i + batch_size], [], []
        for path in chunk:
            name = image_id(path, root)
            key = str(path.relative_to(root))
            try:
                images_np.append(load_image(path, load_size, box_table.get(key) or box_table.get(path.name)))
                names.append(name)
            except ImageError as e:
                manifest.append({"id": name, "status": "failed", "reason": str(e), "file": _stat(path)})
                summary.failed.append((name, str(e)))
                bar.update(1)
        if not names:
            continue
        batch = torch.from_numpy(np.stack(images_np)).permute(0, 3, 1, 2).float().div(255.0)
        pred = predict(net, batch, uv_axis=uv_axis)
        result = fit_batch(flame, pred, fit_vertices, vertex_uv, mirror, config)
        for b, name in enumerate(names):
            normal = pred["normal"][b].permute(1, 2, 0).cpu().numpy()
            write_outputs(out, name, result, b, assets.model.faces, images_np[b], normal, config.raster_size)
            manifest.append({"id": name, "status": "ok", "reason": None, "losses": result.losses})
            summary.fitted += 1
            bar.update(1)
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary
