"""`p3dmm train fit|validate` (LightningCLI) and `p3dmm train export`."""

from __future__ import annotations

from pathlib import Path

from p3dmm.commands import CommandError


def fit(argv: list[str]) -> int:
    """Train the normal/UV priors on shards (LightningCLI: --config configs/train.yaml, --trainer.*, --model.*, --data.*)."""
    from p3dmm.training.cli import main

    return main(["fit", *argv])


def validate(argv: list[str]) -> int:
    """Validation metrics of a checkpoint (LightningCLI: --config ..., --ckpt_path CKPT)."""
    from p3dmm.training.cli import main

    return main(["validate", *argv])


fit.raw_argv = validate.raw_argv = True  # type: ignore[attr-defined]


def export(*, ckpt: Path, out: Path) -> int:
    """Write the small inference file (network config + weights) that the fitting stage reads.

    Args:
        ckpt: a training checkpoint (e.g. runs/train/.../checkpoints/last.ckpt).
        out: the file to write (e.g. runs/priors.pt).
    """
    from p3dmm.training.export import export_priors

    try:
        meta = export_priors(ckpt, out)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    print(f"wrote {out} (step {meta['step']}, code {meta['code_version']})")
    return 0
