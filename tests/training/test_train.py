"""Training end to end: overfitting, two DDP processes (gloo) through the CLI with wandb offline, two nodes
through torchrun, resume from a mid-run checkpoint, and the exported inference file."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

from p3dmm.training.augment import AugmentConfig
from p3dmm.training.data import ShardDataModule
from p3dmm.training.export import export_priors, load_priors, read_checkpoint
from p3dmm.training.module import PriorModule
from p3dmm.training.wandb_offline import read_history

from .conftest import TINY, TINY_ARGS

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
       "WANDB_SILENT": "true"}


def _fit(args: list[str], cwd: Path, timeout: int = 400, launcher: list[str] | None = None) -> subprocess.Popen:
    cmd = [*(launcher or [sys.executable, "-m"]), "p3dmm", "train", "fit", *TINY_ARGS, *args]
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc: subprocess.Popen, timeout: int = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def test_loss_falls_when_overfitting(shards):
    L.seed_everything(0)
    model = PriorModule(network=TINY, lr_head=3e-3, lr_backbone=1e-3, warmup_steps=5, panels_every=0)
    dm = ShardDataModule(shards=str(shards), batch_size=4, num_workers=0, train_batches=60, output_size=32,
                         input_size=28, shuffle_buffer=0, augment=AugmentConfig(enabled=False))
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(max_steps=60, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[Record()])
    trainer.fit(model, dm)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)


def test_ddp_two_processes_wandb_offline_and_export(shards, tmp_path):
    root = tmp_path / "run"
    out = _wait(_fit(["--data.shards", str(shards), "--trainer.devices", "2", "--trainer.max_steps", "6",
                      "--trainer.val_check_interval", "3", "--data.train_batches", "3",
                      "--trainer.default_root_dir", str(root)], tmp_path))
    assert "gloo" in out or "GLOO" in out or "distributed_backend=gloo" in out
    ckpt = root / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and read_checkpoint(ckpt)["global_step"] == 6
    runs = glob.glob(str(root / "wandb" / "offline-run-*"))
    assert len(runs) == 1  # rank 0 only
    history = read_history(runs[0])
    losses = [r["train/loss"] for r in history if "train/loss" in r]
    assert losses and all(isinstance(v, float) for v in losses)
    assert any("val/all/normal_median_deg" in r for r in history)
    assert any("val/all/uv_median_px" in r for r in history)
    assert (root / "config.yaml").is_file()

    # export: a weights-only file that reproduces the trained network
    export_priors(ckpt, tmp_path / "priors.pt")
    payload = torch.load(tmp_path / "priors.pt", weights_only=True)
    assert payload["format"] == "p3dmm-priors" and payload["meta"]["step"] == 6
    net = load_priors(tmp_path / "priors.pt")
    state = read_checkpoint(ckpt)["state_dict"]
    module = PriorModule(network=TINY)
    module.load_state_dict(state)
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        a, b = net(x), module.net.eval()(x)
    for k in ("normal", "uv"):
        torch.testing.assert_close(a[k], b[k])


def test_resume_continues_at_step_and_learning_rate(shards, tmp_path):
    common = ["--data.shards", str(shards), "--trainer.devices", "1", "--data.train_batches", "4",
              "--trainer.max_steps", "8", "--trainer.val_check_interval", "4", "--model.warmup_steps", "3",
              "--checkpoint.every_n_train_steps", "4", "--checkpoint.save_top_k", "-1", "--checkpoint.monitor", "null",
              "--checkpoint.filename", "step{step}", "--trainer.log_every_n_steps", "1"]
    full = tmp_path / "full"
    _wait(_fit([*common, "--trainer.default_root_dir", str(full)], tmp_path))
    mid = full / "checkpoints" / "stepstep=4.ckpt"
    assert mid.is_file(), sorted(p.name for p in (full / "checkpoints").iterdir())
    resumed = tmp_path / "resumed"
    _wait(_fit([*common, "--trainer.default_root_dir", str(resumed), "--ckpt_path", str(mid)], tmp_path))
    assert read_checkpoint(resumed / "checkpoints" / "last.ckpt")["global_step"] == 8

    def lrs(root):
        rows = read_history(glob.glob(str(root / "wandb" / "offline-run-*"))[0])
        return {int(r["trainer/global_step"]): r["lr-AdamW/head"] for r in rows if "lr-AdamW/head" in r}

    a, b = lrs(full), lrs(resumed)
    assert min(b) >= 4  # the resumed run starts at step 4, not 0
    common_steps = sorted(set(a) & set(b))
    assert common_steps, (a, b)
    for s in common_steps:
        assert abs(a[s] - b[s]) < 1e-12, (s, a[s], b[s])


def test_two_nodes_through_torchrun(shards, tmp_path):
    """Two launcher processes, one per 'node', through infra/train/torchrun-train.sh with the environment a
    cluster scheduler sets (NNODES, NODE_RANK, MASTER_ADDR/PORT); a --config in the arguments must not reset
    the launcher's node and device counts."""
    root = tmp_path / "two_nodes"
    config = tmp_path / "base.yaml"
    config.write_text("trainer:\n  num_nodes: 1\n  devices: 1\n  max_steps: 3\n")
    args = ["--config", str(config), *TINY_ARGS, "--data.shards", str(shards), "--trainer.max_steps", "3",
            "--data.train_batches", "3", "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(root)]
    launcher = Path(__file__).resolve().parents[2] / "infra" / "train" / "torchrun-train.sh"
    procs = [subprocess.Popen(["bash", str(launcher), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**ENV, "NNODES": "2", "NODE_RANK": str(n), "NPROC": "1", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": "29547"})
             for n in (0, 1)]
    outs = [_wait(p) for p in procs]
    assert read_checkpoint(root / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert any("GLOBAL_RANK: 1" in o or "global_rank=1" in o or "Initializing distributed: GLOBAL_RANK: 1" in o
               for o in outs), outs[1][-2000:]
