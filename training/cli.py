"""`p3dmm train fit|validate ...`: LightningCLI over PriorModule + ShardDataModule.

Defaults a user of this field expects: bf16-mixed on GPU and fp32 on CPU (unless --trainer.precision
is given), DDP when there is more than one device or node (nccl on GPU, gloo on CPU), checkpoints
(last + best by the validation normal error) written atomically, wandb offline unless you are logged in,
the resolved config and the code version saved with the run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from jsonargparse import lazy_instance
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from p3dmm.training.data import ShardDataModule
from p3dmm.training.module import PriorModule, code_version


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary name in the same folder, fsync, then rename: a crash while saving never
    leaves a truncated `last.ckpt` (the resume point) behind."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        protocol = get_filesystem(path).protocol
        if "file" not in (protocol if isinstance(protocol, tuple) else (protocol,)):  # remote storage: as Lightning does
            return super().save_checkpoint(checkpoint, path, storage_options)
        import io

        from p3dmm.flame.atomic import atomic_write

        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(path, buffer.getvalue())


def wandb_logged_in() -> bool:
    """True when an API key is configured (env, settings or ~/.netrc) and WANDB_MODE is not offline."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class P3dmmWandbLogger(WandbLogger):
    """WandbLogger that is offline unless you are logged in (offline=None), and records the code version.

    Args:
        project: wandb project.
        save_dir: where runs are written (offline runs: save_dir/wandb/offline-run-*; `wandb sync` them);
            default: the trainer's default_root_dir.
        name: run name.
        offline: None: online only when logged in; True/False to force.
    """

    def __init__(self, project: str = "p3dmm", save_dir: str | None = None, name: str | None = None,
                 offline: bool | None = None):
        offline = (not wandb_logged_in()) if offline is None else offline
        save_dir = save_dir or "runs/train"
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(project=project, save_dir=save_dir, name=name, offline=offline,
                         config={"code_version": code_version()})


class ConfigToLogger(SaveConfigCallback):
    """Save config.yaml beside the run (as LightningCLI does) and send the resolved config to the logger."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if trainer.logger is not None:
            trainer.logger.log_hyperparams({"config": self.config.as_dict()})


class TrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # always-on callbacks, configurable as --checkpoint.* and --lr_monitor.*
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.monitor": "val/loss", "checkpoint.mode": "min",
                             "checkpoint.filename": "best-{step}", "checkpoint.save_top_k": 1})
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        # one value, set once: the data pipeline produces what the network consumes
        parser.link_arguments("model.network.output_size", "data.output_size")
        parser.link_arguments("model.network.output_size", "data.input_size", compute_fn=lambda s: s // 16 * 14)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        gpu = torch.cuda.is_available() and trainer.accelerator in ("auto", "gpu", "cuda")
        if trainer.precision is None:
            trainer.precision = "bf16-mixed" if gpu else "32-true"
        devices = trainer.devices
        many = (isinstance(devices, int) and devices > 1) or (isinstance(devices, str) and devices not in ("1", "auto")) \
            or (isinstance(devices, list) and len(devices) > 1) or (trainer.num_nodes or 1) > 1
        if trainer.strategy == "auto" and many:
            trainer.strategy = "ddp"
        root = trainer.default_root_dir or "runs/train"
        logger = trainer.logger
        if getattr(logger, "class_path", "").endswith("P3dmmWandbLogger") and not logger.init_args.get("save_dir"):
            logger.init_args["save_dir"] = root
        if "checkpoint" in config and not config.checkpoint.dirpath:
            # a fixed folder (not one per wandb run id), so `--ckpt_path last` finds the previous run's last.ckpt
            config.checkpoint.dirpath = os.path.join(root, "checkpoints")


def main(argv: Sequence[str]) -> int:
    TrainCLI(
        PriorModule,
        ShardDataModule,
        args=list(argv),
        save_config_callback=ConfigToLogger,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": lazy_instance(P3dmmWandbLogger),
            "plugins": [AtomicCheckpointIO()],
        },
        auto_configure_optimizers=False,
    )
    return 0
