"""The small inference file the fitting stage reads: network config + weights, nothing executable.

    {"format": "p3dmm-priors", "version": 1, "config": NetworkConfig as a dict, "state_dict": {...},
     "meta": {"step", "code_version", "source"}}

Loadable with `torch.load(path, weights_only=True)`: plain containers and tensors only.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from p3dmm.flame.atomic import atomic_write
from p3dmm.training.network import NetworkConfig, PriorNet

FORMAT, VERSION = "p3dmm-priors", 1


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint of PriorModule, read without running pickled code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file or foreign classes: both mean "not ours"
        raise ValueError(f"{path}: not a readable p3dmm training checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]})") from None


def export_priors(checkpoint: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the inference file for a training checkpoint; returns its meta."""
    ckpt = read_checkpoint(checkpoint)
    hp = ckpt.get("hyper_parameters", {})
    if "network" not in hp or "state_dict" not in ckpt:
        raise ValueError(f"{checkpoint}: no network config or weights (not a PriorModule checkpoint)")
    config = NetworkConfig(**{**hp["network"], "outputs": tuple(hp["network"]["outputs"])})
    prefix = "net."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    meta = {"step": int(ckpt.get("global_step", 0)), "code_version": str(ckpt.get("code_version", "")),
            "source": str(checkpoint)}
    save_priors(config, state, out, meta)
    return meta


def save_priors(config: NetworkConfig, state_dict: dict, out: str | os.PathLike, meta: dict | None = None) -> None:
    """Write the inference file for a network config and its weights (atomically)."""
    payload = {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "state_dict": dict(state_dict),
               "meta": dict(meta or {})}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, buffer.getvalue())


def load_priors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> PriorNet:
    """The network of an exported file, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: priors file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable priors file ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (export one with `p3dmm train export CKPT OUT`)")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path}: {FORMAT} version {payload.get('version')}, this p3dmm reads {VERSION}")
    cfg = payload["config"]
    net = PriorNet(NetworkConfig(**{**cfg, "outputs": tuple(cfg["outputs"])}))
    net.load_state_dict(payload["state_dict"])
    return net.eval()
