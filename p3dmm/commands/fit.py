"""`p3dmm fit [run]`: FLAME fits of a folder of face images from the exported priors."""

from __future__ import annotations

from pathlib import Path

from jsonargparse.typing import PositiveInt

from p3dmm.cli import CommandError


def run(*, images: Path, priors: Path, out: Path, flame: Path | None = None, batch_size: PositiveInt = 8,
        steps: PositiveInt = 300, raster_size: PositiveInt = 256, boxes: Path | None = None, device: str | None = None,
        address: str | None = None, num_cpus: PositiveInt | None = None, workers: PositiveInt | None = None,
        progress: bool = True) -> int:
    """Fit FLAME to every image of a folder (batched; reruns skip finished images).

    Args:
        images: folder of face crops (jpg/png; searched recursively).
        priors: the file written by `p3dmm train export`.
        out: output folder (<image>.json, .posed.ply, .neutral.ply, .overlay.png, manifest.jsonl).
        flame: FLAME folder; default: $P3DMM_FLAME_DIR.
        batch_size: images fitted together as one problem.
        steps: joint-stage optimisation steps.
        raster_size: side of the rendered maps the fit compares.
        boxes: JSON {image: [x0, y0, x1, y1]} to crop faces from larger photos (square, x1.42).
        device: "cuda", "cpu" (default: cuda when available; Ray actors take a GPU each when there are GPUs).
        address: Ray cluster address ("auto" or host:port): fit batches on Ray actors there.
        num_cpus: CPUs of a local Ray (with --workers and no --address).
        workers: Ray actors (default: one per GPU, or one per 2 CPUs); setting it without --address starts a
            local Ray.
        progress: show a progress bar.
    """
    from p3dmm.commands.flame import _load
    from p3dmm.fitting.fit import FitConfig
    from p3dmm.fitting.job import fit_images

    folder, _ = _load(flame)
    try:
        summary = fit_images(images, priors, folder, out, batch_size=batch_size,
                             config=FitConfig(steps=steps, raster_size=raster_size), boxes=boxes, device=device,
                             address=address, num_cpus=num_cpus, workers=workers, progress=progress)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    for line in summary.lines():
        print(line)
    print(f"manifest: {out / 'manifest.jsonl'}")
    return 1 if summary.failed else 0
