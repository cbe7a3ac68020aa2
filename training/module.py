"""The LightningModule: losses, AdamW parameter groups and schedule, guarded steps, metrics, panels.

The network itself is :class:`~p3dmm.training.network.PriorNet` (a plain module); this class only
trains it.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import lightning as L
import numpy as np
import torch

from p3dmm.pipeline.datasets import NAMES as DATASETS
from p3dmm.training import objective as O
from p3dmm.training.network import NetworkConfig, PriorNet

NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token")


def code_version() -> str:
    """git commit of the project (with '+dirty'), or the package version when not in a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from p3dmm import __version__

        return __version__


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor: linear from ~0 to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return max(step + 1, 1) / max(warmup, 1)
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class PriorModule(L.LightningModule):
    """Trains the normal and/or UV prior.

    Args:
        network: the network (see NetworkConfig; the data module's sizes follow it).
        backbone_weights: local DINOv2 weights (timm or safetensors) for the backbone; None: random init
            (or the hub, when `network.backbone_kwargs` has pretrained: true and you are online).
        lr_head: AdamW learning rate of the heads.
        lr_backbone: AdamW learning rate of the backbone (fine-tuned slowly).
        weight_decay: on weights; biases, norms and position/class/register tokens get none.
        betas: AdamW betas.
        warmup_steps: linear warm-up, then cosine decay to zero at the trainer's last step.
        face_weight: UV loss weight of face-region pixels.
        other_weight: UV loss weight of other foreground pixels.
        uv_loss_weight: weight of the UV loss against the normal loss.
        skip_grad_norm: skip the update when the gradient norm exceeds this (after 20 steps) or is not
            finite; the step is counted in train/skipped_steps.
        compile: torch.compile the network.
        panels_every: log an RGB | prediction | target | error panel every N training steps (0: never).
    """

    def __init__(self, network: NetworkConfig = NetworkConfig(), backbone_weights: str | None = None,  # noqa: B008
                 lr_head: float = 4e-4, lr_backbone: float = 1e-5, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 200, face_weight: float = 1.2,
                 other_weight: float = 0.2, uv_loss_weight: float = 1.0, skip_grad_norm: float = 1e4,
                 compile: bool = False, panels_every: int = 500):
        super().__init__()
        self.network_config = network
        self.save_hyperparameters({"network": self.network_config.to_dict(), "backbone_weights": backbone_weights,
                                   "lr_head": lr_head, "lr_backbone": lr_backbone, "weight_decay": weight_decay,
                                   "betas": list(betas), "warmup_steps": warmup_steps, "face_weight": face_weight,
                                   "other_weight": other_weight, "uv_loss_weight": uv_loss_weight,
                                   "skip_grad_norm": skip_grad_norm, "compile": compile,
                                   "panels_every": panels_every})
        self.net = PriorNet(self.network_config, backbone_weights)
        self._forward = torch.compile(self.net) if compile else self.net
        self.skipped_steps = 0
        n_sets = len(DATASETS) + 1
        self.register_buffer("angle_hist", torch.zeros(n_sets, len(O.ANGLE_BINS) - 1, dtype=torch.float64),
                             persistent=False)
        self.register_buffer("uv_hist", torch.zeros(n_sets, len(O.UV_PX_BINS) - 1, dtype=torch.float64),
                             persistent=False)
        self.register_buffer("angle_sum", torch.zeros(n_sets, dtype=torch.float64), persistent=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["code_version"] = code_version()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._forward(image)

    def losses(self, batch: dict, pred: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hp = self.hparams
        out = {}
        if "normal" in pred:
            out["normal"] = O.normal_loss(pred["normal"], batch["normal"], batch["mask"])
        if "uv" in pred:
            out["uv"] = hp.uv_loss_weight * O.uv_loss(pred["uv"], batch["uv"], batch["mask"], batch["face"],
                                                      hp.face_weight, hp.other_weight)
        out["loss"] = sum(out.values())
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pred = self(batch["image"])
        losses = self.losses(batch, pred)
        bs = batch["image"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=bs, sync_dist=False)
        every = self.hparams.panels_every
        if every and self.global_step % every == 0 and self.global_rank == 0:
            self._log_panel(batch, pred, "train")
        return losses["loss"]

    # -- guarded optimiser step --------------------------------------------------------------------

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Skip non-finite or exploding updates (grads set to None: AdamW leaves those parameters alone),
        else clip. Gradients are already all-reduced here, so every rank decides the same."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.tensor(0.0)
        too_big = self.global_step > 20 and float(norm) > self.hparams.skip_grad_norm
        if not torch.isfinite(norm) or too_big:
            for p in params:
                p.grad = None
            self.skipped_steps += 1
        elif gradient_clip_val:
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)
        self.log("train/grad_norm", norm.float() if torch.isfinite(norm) else torch.tensor(-1.0), batch_size=1)
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=1)

    def configure_optimizers(self):
        hp = self.hparams
        backbone = set(map(id, self.net.parameter_groups()[0]))
        groups = {(k, d): [] for k in ("backbone", "head") for d in (True, False)}
        for name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            kind = "backbone" if id(p) in backbone else "head"
            decay = p.ndim > 1 and not any(n in name for n in NO_DECAY_NAMES)
            groups[kind, decay].append(p)
        lr = {"backbone": hp.lr_backbone, "head": hp.lr_head}
        param_groups = [{"params": ps, "lr": lr[k], "weight_decay": hp.weight_decay if d else 0.0,
                         "name": f"{k}{'' if d else '_no_decay'}"} for (k, d), ps in groups.items() if ps]
        optimizer = torch.optim.AdamW(param_groups, betas=tuple(hp.betas))
        total = int(self.trainer.estimated_stepping_batches) if self.trainer else 1000
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, hp.warmup_steps, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation metrics ------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self.angle_hist.zero_()
        self.uv_hist.zero_()
        self.angle_sum.zero_()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pred = self(batch["image"])
        losses = self.losses(batch, pred)
        bs = batch["image"].shape[0]
        self.log("val/loss", losses["loss"], batch_size=bs, sync_dist=True)
        for i in range(bs):
            d = int(batch["dataset"][i])
            mask = batch["mask"][i] > 0
            if "normal" in pred and mask.any():
                err = O.angular_error_deg(pred["normal"][i : i + 1], batch["normal"][i : i + 1])[0][mask]
                self.angle_hist[d] += O.histogram(err, O.ANGLE_BINS)
                self.angle_sum[d] += err.double().sum()
            face = mask & (batch["face"][i] > 0)
            if "uv" in pred and face.any():
                err = O.uv_error_px(pred["uv"][i : i + 1], batch["uv"][i : i + 1])[0][face]
                self.uv_hist[d] += O.histogram(err, O.UV_PX_BINS)
        if batch_idx == 0 and self.global_rank == 0 and self.hparams.panels_every:
            self._log_panel(batch, pred, "val")

    def on_validation_epoch_end(self) -> None:
        for buffer in (self.angle_hist, self.uv_hist, self.angle_sum):
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(buffer)
        for metrics in self.validation_metrics().values():
            for name, value in metrics.items():
                if not math.isnan(value):
                    self.log(name, value, sync_dist=False, rank_zero_only=False)

    def validation_metrics(self) -> dict[str, dict[str, float]]:
        """Per dataset and "all": normals mean/median error and % within 11.25/22.5/30 deg; UV median/p90 px."""
        names = [*DATASETS, "other"]
        out = {}
        for key, rows in [("all", slice(None))] + [(n, slice(i, i + 1)) for i, n in enumerate(names)]:
            a, u = self.angle_hist[rows].sum(0).cpu(), self.uv_hist[rows].sum(0).cpu()
            if a.sum() == 0 and u.sum() == 0:
                continue
            m = {}
            if a.sum() > 0:
                m[f"val/{key}/normal_mean_deg"] = float(self.angle_sum[rows].sum() / a.sum())
                m[f"val/{key}/normal_median_deg"] = O.quantile_from_histogram(a, O.ANGLE_BINS.double(), 0.5)
                for t in (11.25, 22.5, 30.0):
                    m[f"val/{key}/normal_within_{t:g}"] = O.fraction_below(a, O.ANGLE_BINS.double(), t)
            if u.sum() > 0:
                m[f"val/{key}/uv_median_px"] = O.quantile_from_histogram(u, O.UV_PX_BINS.double(), 0.5)
                m[f"val/{key}/uv_p90_px"] = O.quantile_from_histogram(u, O.UV_PX_BINS.double(), 0.9)
            out[key] = m
        return out

    # -- panels ------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        # trainer.log_dir is a collective call under DDP: resolve it here, on every rank, never in rank-0 code
        self._panel_dir = Path(self.trainer.log_dir) / "panels" if self.trainer.log_dir else None

    def _log_panel(self, batch: dict, pred: dict[str, torch.Tensor], stage: str) -> None:
        from p3dmm.training.panels import prediction_panel

        panel = prediction_panel(batch, {k: v.detach() for k, v in pred.items()})
        folder = getattr(self, "_panel_dir", None)
        if folder is not None:
            from p3dmm.flame.grid import save_png

            os.makedirs(folder, exist_ok=True)
            save_png(folder / f"{stage}-step{self.global_step:07d}.png", panel)
        logger = self.logger
        if logger is not None and hasattr(logger, "log_image"):
            logger.log_image(key=f"{stage}/panel", images=[np.asarray(panel)], step=self.global_step)
