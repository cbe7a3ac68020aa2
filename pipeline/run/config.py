"""The typed settings of `p3dmm run` (one dataclass per section) and the layout of a run folder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from p3dmm.pipeline.datasets import NAMES
from p3dmm.pipeline.jobs.render import RenderConfig
from p3dmm.registration.config import RegistrationConfig

STAGES = ("flame", "scans", "register", "render", "train", "fit", "eval")


@dataclass
class FlameSpec:
    """path: a real FLAME folder (generic_model.pkl, ...); unset: a synthetic FLAME-format model."""

    path: str | None = None
    vertices: int = 5023
    seed: int = 0


@dataclass
class DatasetSpec:
    """One dataset: `source` is its layout (nphm, facescape, facescape-mview, ava256, generic); `root` its
    folder, unset for synthetic scans of that layout (`subjects` x `expressions`, with ground truth)."""

    source: Literal[NAMES]
    root: str | None = None
    name: str | None = None
    subjects: int = 1
    expressions: int = 2
    seed: int = 1
    source_options: dict[str, str] = field(default_factory=dict)
    limit: int | None = None

    @property
    def label(self) -> str:
        return self.name or self.source


@dataclass
class TrainSpec:
    """config: a LightningCLI config; devices: processes (DDP); launcher: "local" (`p3dmm train fit` with
    Lightning's own launcher) or "torchrun" (infra/train/torchrun-train.sh); args: more overrides;
    priors: an already exported priors file to use instead of training."""

    config: str = "configs/train-tiny.yaml"
    devices: int = 2
    launcher: Literal["local", "torchrun"] = "local"
    args: list[str] = field(default_factory=list)
    priors: str | None = None


@dataclass
class FitSpec:
    split: str = "val"
    limit: int | None = None
    batch_size: int = 8
    steps: int = 200
    init_steps: int = 150
    raster_size: int = 128
    baseline: bool = True


@dataclass
class PipelineConfig:
    out: str
    flame: FlameSpec
    datasets: list[DatasetSpec]
    register: RegistrationConfig
    render: RenderConfig  # the render command's own settings (views, size, photos, ...)
    train: TrainSpec
    fit: FitSpec
    address: str | None = None
    num_cpus: int | None = None
    progress: bool = True


def resolve_paths(config: PipelineConfig) -> PipelineConfig:
    """The config with every path absolute, against the working folder it was given in (subprocesses and
    Ray workers on other nodes run elsewhere)."""

    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().resolve())

    replace = dataclasses.replace
    return replace(config, out=absolute(config.out),
                   flame=replace(config.flame, path=absolute(config.flame.path)),
                   datasets=[replace(d, root=absolute(d.root)) for d in config.datasets],
                   train=replace(config.train, config=absolute(config.train.config),
                                 priors=absolute(config.train.priors)))


class RunLayout:
    """Where every stage of a run reads and writes: the driver, the report and the stages agree on it."""

    def __init__(self, config: PipelineConfig):
        self.config = config
        self.out = Path(config.out)
        self.records = self.out / "stages"

    @property
    def flame_dir(self) -> Path:
        return Path(self.config.flame.path) if self.config.flame.path else self.out / "flame"

    def scans_dir(self, ds: DatasetSpec) -> Path:
        return Path(ds.root) if ds.root else self.out / "scans" / ds.label

    def registered_dir(self, ds: DatasetSpec) -> Path:
        return self.out / "registered" / ds.label

    @property
    def fit_inputs(self) -> Path:
        """The held-out views and their ground truth, exported by the fit stage (`p3dmm fit --shards`)."""
        return self.out / "fit" / "inputs"

    @property
    def priors(self) -> Path:
        return Path(self.config.train.priors) if self.config.train.priors else self.out / "train" / "priors.pt"

    def record(self, stage: str) -> dict | None:
        path = self.records / f"{stage}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def outputs(self, stage: str) -> list[Path]:
        """What a stage writes inside the run folder (never a user's FLAME folder or dataset root)."""
        c, out = self.config, self.out
        return {"flame": [] if c.flame.path else [out / "flame", out / "flame_preview.png"],
                "scans": [self.scans_dir(d) for d in c.datasets if not d.root],
                "register": [self.registered_dir(d) for d in c.datasets],
                "render": [out / "shards", out / "shards_preview.png"],
                "train": [] if c.train.priors else [out / "train"],
                "fit": [out / "fit", out / "fit-baseline"],
                "eval": [out / "fit" / "eval", out / "fit-baseline" / "eval"]}[stage]
