"""`p3dmm synth scans`, `p3dmm register [run]`, `p3dmm register eval`, `p3dmm register report`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from jsonargparse.typing import PositiveInt

from p3dmm.commands import CommandError
from p3dmm.pipeline.datasets import NAMES
from p3dmm.registration.config import INIT_CHOICES

Source = Literal[NAMES]  # the dataset registry's names
Init = Literal[INIT_CHOICES]  # RegistrationConfig.init
Landmarks = Literal["dataset", "detect", "detect-always"]  # pipeline.jobs.register.LANDMARK_MODES


def synth_scans(*, layout: Source, out: Path, flame: Path | None = None, subjects: PositiveInt = 2,
                expressions: PositiveInt = 2, seed: int = 0, stress: bool = False) -> int:
    """Write synthetic raw scans in a dataset's real layout, ground truth in OUT/_truth/.

    Args:
        layout: which dataset layout to reproduce.
        out: dataset root to write.
        flame: FLAME folder (real or synthetic); default: $P3DMM_FLAME_DIR.
        subjects: number of subjects (identities).
        expressions: expressions (or frames) per subject.
        seed: random seed; same seed, same data.
        stress: the hard setting (hair, holes, unseen parts, torso bridge, fragments, strong poses; every
            layout, as far as its data allows: docs/datasets.md "Stress setting").
    """
    from p3dmm.commands.flame import _load
    from p3dmm.pipeline.datasets import write_synthetic

    _, assets = _load(flame)
    ids = write_synthetic(layout, out, assets, subjects=subjects, expressions=expressions, seed=seed, stress=stress)
    print(f"wrote {len(ids)} synthetic {layout} scans to {out} (ground truth in {out / '_truth'})")
    return 0


def run(*, source: Source, root: Path, out: Path, flame: Path | None = None, address: str | None = None,
        num_cpus: PositiveInt | None = None, limit: PositiveInt | None = None,
        source_options: dict[str, str] | None = None, registration: dict[str, int | float | bool | str] | None = None,
        init: Init | None = None, landmarks: Landmarks = "dataset", progress: bool = True) -> int:
    """Register every scan of a dataset to FLAME topology, one Ray task per scan; reruns skip finished scans.

    Args:
        source: dataset layout of ROOT.
        root: dataset root.
        out: output folder (registered/*.npz, manifest.jsonl, job.json).
        flame: FLAME folder; default: $P3DMM_FLAME_DIR.
        address: Ray cluster address ("auto" or host:port); default: a local Ray.
        num_cpus: CPUs for the local Ray (default: all).
        limit: register only the first N scans.
        source_options: adapter options, e.g. '{"topology": "assets/face_topology.obj"}' for ava256,
            '{"landmark_indices": "landmark_indices.npz"}' for facescape.
        registration: overrides of RegistrationConfig fields (checked before any scan is read).
        init: where the fit starts, a shortcut for --registration '{"init": ...}': "template" (FLAME's mean
            head; the default) or "dataset" (the FLAME fit the dataset ships, NPHM's flame.ply; scans
            without one start from the template).
        landmarks: "dataset" (the reader's, if any), "detect" (found on renders of the scan where the reader
            gives none; docs/registration.md, "Initialisations"), "detect-always" (for every scan, the
            reader's kept only where no face is found).
        progress: show a progress bar.
    """
    from p3dmm.commands.flame import _load
    from p3dmm.flame.settings import build_settings
    from p3dmm.pipeline.jobs.register import registration_job, run_registration
    from p3dmm.registration.config import RegistrationConfig

    folder, _ = _load(flame)
    overrides = _with_init(registration, init)
    try:
        job = registration_job(source, root, out, folder, source_options=source_options,
                               registration=build_settings(RegistrationConfig, overrides, "--registration"),
                               landmarks=landmarks)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    summary = run_registration(job, address=address, num_cpus=num_cpus, limit=limit, progress=progress)
    for line in summary.lines():
        print(line)
    print(f"manifest: {out / 'manifest.jsonl'}")
    return 1 if summary.failed else 0


def _with_init(registration: dict | None, init: str | None) -> dict | None:
    """--registration with --init folded in: one config, two spellings; a conflict stops the command."""
    if init is None:
        return registration
    given = (registration or {}).get("init")
    if given is not None and given != init:
        raise CommandError(f"--init {init} contradicts --registration's init {given!r}; give one of them")
    return {**(registration or {}), "init": init}


def evaluate(*, out: Path, truth: Path) -> int:
    """Compare registrations in OUT with synthetic ground truth (TRUTH/_truth/*.npz); writes OUT/eval.json.

    Args:
        out: a `p3dmm register` output folder.
        truth: the synthetic dataset root that holds _truth/.
    """
    from p3dmm.pipeline.report.registration_eval import evaluate_registrations

    if not (out / "job.json").is_file():
        raise CommandError(f"{out}: not a `p3dmm register` output folder (no job.json)")
    if not (truth / "_truth").is_dir():
        raise CommandError(f"{truth}: no _truth/ folder (ground truth exists only for synthetic data)")
    result = evaluate_registrations(out, truth)
    o = result["overall"]
    print(f"{o['scans']} scans, {o['accepted']} accepted; correspondence error over the face: "
          f"median {o['median_mm']:.3f} mm, p95 {o['p95_mm']:.3f} mm (accepted scans); "
          f"worst accepted median {o['worst_accepted_median_mm']:.3f} mm -> {out / 'eval.json'}")
    return 0


def report(*, out: Path, size: PositiveInt = 256, limit: PositiveInt | None = None, progress: bool = True) -> int:
    """Write OUT/report/index.html: per-scan overlays and error heat maps, error histogram, failures.

    Args:
        out: a `p3dmm register` output folder.
        size: pixel size of each panel.
        limit: render only the first N scans (the page still lists every failure).
        progress: show a progress bar.
    """
    from p3dmm.pipeline.report.registration import write_register_report

    if not (out / "job.json").is_file():
        raise CommandError(f"{out}: not a `p3dmm register` output folder (no job.json)")
    page = write_register_report(out, size=size, limit=limit, progress=progress)
    print(f"registration QA page: {page}")
    return 0
