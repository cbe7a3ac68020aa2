"""`p3dmm fit [run]`: FLAME fits of a folder of face images from the exported priors."""

from __future__ import annotations

from pathlib import Path

from jsonargparse.typing import PositiveInt

from p3dmm.commands import CommandError


def run(*, priors: Path, out: Path, images: Path | None = None, shards: Path | None = None, split: str = "val",
        limit: PositiveInt | None = None, flame: Path | None = None, batch_size: PositiveInt = 8,
        steps: PositiveInt = 300, init_steps: int = 150, raster_size: PositiveInt = 256, shape: bool = True, subjects: str | None = None,
        boxes: Path | None = None, detect: bool = False, device: str | None = None, address: str | None = None,
        num_cpus: PositiveInt | None = None, workers: PositiveInt | None = None, progress: bool = True) -> int:
    """Fit FLAME to every image of a folder, or to the held-out views of a shard folder (batched; reruns
    skip finished images).

    Args:
        images: folder of face crops (jpg/png; searched recursively).
        shards: instead of --images: a `p3dmm render` output; the views of --split are exported with their
            ground truth to OUT/inputs (images/, gt/ for `p3dmm eval`, subjects.json) and fitted.
        split: the shard split to fit (with --shards).
        limit: at most this many shard samples (with --shards).
        priors: the file written by `p3dmm train export`.
        out: output folder (<image>.json, .posed.ply, .neutral.ply, .overlay.png, manifest.jsonl).
        flame: FLAME folder; default: $P3DMM_FLAME_DIR.
        batch_size: images fitted together as one problem.
        steps: joint-stage optimisation steps.
        init_steps: steps of the initialisation (rotation, translation, focal from the correspondences).
        raster_size: side of the rendered maps the fit compares.
        shape: fit the identity (FLAME shape); false keeps the mean shape (the baseline).
        subjects: multi-image mode: images of one subject share the shape. "folder" (one subject per
            subfolder) or a JSON file {image: subject} (with --shards: OUT/inputs/subjects.json).
        boxes: JSON {image: [x0, y0, x1, y1]} to crop faces from larger photos (square, x1.42).
        detect: find the face box of images not in --boxes with the bundled detector (libfacedetection);
            an image without a face is recorded as failed.
        device: "cuda", "cpu" (default: cuda when available; Ray actors take a GPU each when there are GPUs).
        address: Ray cluster address ("auto" or host:port): fit batches on Ray actors there.
        num_cpus: CPUs of a local Ray (with --workers and no --address).
        workers: Ray actors (default: one per GPU, or one per 2 CPUs); setting it without --address starts a
            local Ray.
        progress: show a progress bar.
    """
    from p3dmm.commands.flame import _load
    from p3dmm.fitting.fit import FitConfig
    from p3dmm.pipeline.jobs.fit import fit_images, fit_shards

    folder, _ = _load(flame)
    if (images is None) == (shards is None):
        raise CommandError("give one of --images DIR or --shards DIR")
    options = {"batch_size": batch_size, "boxes": boxes, "device": device, "address": address, "num_cpus": num_cpus,
               "workers": workers, "progress": progress, "subjects": subjects, "detect": detect,
               "config": FitConfig(steps=steps, init_steps=init_steps, raster_size=raster_size, fit_shape=shape)}
    try:
        if shards is not None:
            summary = fit_shards(shards, split, priors, folder, out, limit=limit, **options)
            inputs = out / "inputs"
            print(f"{split} views of {shards}: images {inputs / 'images'}, ground truth {inputs / 'gt'} "
                  f"(p3dmm eval --gt), subjects {inputs / 'subjects.json'}")
        else:
            summary = fit_images(images, priors, folder, out, **options)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    for line in summary.lines():
        print(line)
    print(f"manifest: {out / 'manifest.jsonl'}")
    return 1 if summary.failed else 0
