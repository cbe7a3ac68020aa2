"""The shard DataModule: WebDataset streams split over ranks and loader workers, decoded and augmented.

Training: the train shards are split by rank and then by loader worker *before* they are repeated, so
ranks (and workers) read disjoint samples forever, however the shard count divides; each worker
cycles its own shards in a fresh order per pass, through a shuffle buffer, and every rank stops after
exactly `train_batches` batches per epoch (`with_epoch`), so DDP ranks never wait on each other. (A
`resampled=True` stream gives equal counts too, but draws shards with replacement: ranks would overlap.)
Validation: every rank reads every validation shard once and keeps every world_size-th sample.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from p3dmm.flame.mirror import mirror_axis_of
from p3dmm.pipeline.datasets import NAMES
from p3dmm.pipeline.shards.format import FACE, FOREGROUND, OCCLUDED, OUTSIDE, SampleError, decode_sample
from p3dmm.pipeline.shards.reader import warn_and_skip
from p3dmm.training.augment import (
    AugmentConfig,
    crop_box,
    mirror_sample,
    photometric,
    resize_nearest,
    resize_rgb,
)

"""Validation metrics are reported per dataset (index into this tuple; anything else is "other")."""


def dataset_index(name: str) -> int:
    """Index of a sample's dataset in the registry (per-dataset metrics); len(NAMES) for any other."""
    return NAMES.index(name) if name in NAMES else len(NAMES)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class SampleTransform:
    """Decoded shard sample -> training tensors (a picklable callable for loader workers).

    Output dict: image (3, in, in) float [0, 1]; normal (3, S, S); uv (2, S, S); mask (S, S) float (pixels to
    supervise); face (S, S) float (UV-valid face region among them); dataset () long; key str.
    """

    def __init__(self, input_size: int, output_size: int, augment: AugmentConfig | None, uv_axis: float):
        self.input_size, self.output_size, self.augment, self.uv_axis = input_size, output_size, augment, uv_axis

    def __call__(self, members: dict, rng: np.random.Generator) -> dict:
        s = decode_sample(members, depth=False)
        flags = s.flags
        valid = ((flags & FOREGROUND) > 0) & ((flags & (OCCLUDED | OUTSIDE)) == 0)
        masks = np.stack([valid, valid & ((flags & FACE) > 0)], axis=-1).astype(np.uint8)
        rgb, normal, uv = np.array(s.rgb), s.normal, s.uv
        aug = self.augment
        if aug is not None and aug.enabled:
            r0, c0, side = crop_box(rng, rgb.shape[0], aug.crop_scale)
            window = (slice(r0, r0 + side), slice(c0, c0 + side))
            rgb, normal, uv, masks = rgb[window], normal[window], uv[window], masks[window]
            if rng.random() < aug.mirror:
                rgb, normal, uv, masks = mirror_sample(rgb, normal, uv, masks, self.uv_axis)
            rgb = photometric(np.ascontiguousarray(rgb), rng, aug)
        if normal.shape[0] != self.output_size:
            normal, uv, masks = (resize_nearest(a, self.output_size) for a in (normal, uv, masks))
        rgb = resize_rgb(np.ascontiguousarray(rgb), self.input_size)
        return {
            "image": torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float().div_(255.0),
            "normal": torch.from_numpy(np.ascontiguousarray(normal)).permute(2, 0, 1).float(),
            "uv": torch.from_numpy(np.ascontiguousarray(uv)).permute(2, 0, 1).float(),
            "mask": torch.from_numpy(np.ascontiguousarray(masks[..., 0])).float(),
            "face": torch.from_numpy(np.ascontiguousarray(masks[..., 1])).float(),
            "dataset": torch.tensor(dataset_index(s.meta.get("dataset", ""))),
            "key": s.key,
        }


class ShardStream(IterableDataset):
    """Samples of `urls`, split by rank then worker, repeated (train) or read once (val)."""

    def __init__(self, urls: list[str], transform: SampleTransform, *, train: bool, shuffle_buffer: int = 0,
                 seed: int = 0, rank: int = 0, world: int = 1):
        super().__init__()
        self.urls, self.transform, self.train = list(urls), transform, train
        self.shuffle_buffer, self.seed, self.rank, self.world = shuffle_buffer, seed, rank, world

    def _members(self, urls: list[str]) -> Iterator[dict]:
        import webdataset as wds

        return wds.tarfile_to_samples(handler=warn_and_skip)(iter({"url": u} for u in urls))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.rank, worker])
        if self.train:
            mine = self.urls[self.rank :: self.world][worker::workers]
            if not mine:
                raise ValueError(f"rank {self.rank} worker {worker} has no train shard: {len(self.urls)} shards "
                                 f"for {self.world} ranks x {workers} workers; render smaller shards or use fewer workers")
            stream = self._repeat(mine, rng)
        else:
            shard_rank = self.rank * workers + worker  # every rank reads all val shards, keeps its share
            stream = (m for i, m in enumerate(self._members(self.urls)) if i % (self.world * workers) == shard_rank)
        for members in stream:
            try:
                yield self.transform(members, rng)
            except SampleError as e:
                warn_and_skip(e)

    def _repeat(self, urls: list[str], rng: np.random.Generator) -> Iterator[dict]:
        buffer: list[dict] = []
        for epoch in itertools.count():
            order = [urls[i] for i in rng.permutation(len(urls))]
            for members in self._members(order):
                if self.shuffle_buffer <= 1:
                    yield members
                    continue
                buffer.append(members)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(int(rng.integers(len(buffer))))
            if epoch == 0 and not buffer and self.shuffle_buffer > 1:
                raise ValueError(f"train shards {urls} hold no readable samples")


class EpochLoader:
    """Exactly `batches` batches per pass (webdataset's `with_epoch`): over one endless iterator that
    continues across epochs (train), or a fresh pass capped at `batches` (validation)."""

    def __init__(self, loader: DataLoader, batches: int, endless: bool = True):
        self.loader, self.batches, self.endless = loader, batches, endless
        self._iterator: Iterator | None = None

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator:
        if not self.endless:
            return itertools.islice(iter(self.loader), self.batches)
        if self._iterator is None:
            self._iterator = iter(self.loader)
        return itertools.islice(self._iterator, self.batches)


def _collate(samples: list[dict]) -> dict:
    out = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "key"}
    out["key"] = [s["key"] for s in samples]
    return out


class ShardDataModule(L.LightningDataModule):
    """Shards written by `p3dmm render`.

    Args:
        shards: the shard folder (index.json, train-*.tar, val-*.tar).
        batch_size: per rank.
        num_workers: loader workers per rank (capped at the rank's train shard count).
        train_batches: batches per rank per epoch.
        val_batches: cap on validation batches per rank (None: the whole validation split).
        shuffle_buffer: samples held for shuffling in each worker.
        output_size: map size the network predicts (set from the model's config).
        input_size: image size the backbone takes (set from the model's config).
        augment: training augmentations.
        mirror_axis: u of the UV layout's mirror axis; None computes it from the FLAME folder named in
            index.json.
        seed: base seed of shuffling and augmentation (each rank and worker derives its own).
    """

    def __init__(self, shards: str = "runs/demo/shards", batch_size: int = 8, num_workers: int = 2,
                 train_batches: int = 100, val_batches: int | None = None, shuffle_buffer: int = 64,
                 output_size: int = 512, input_size: int = 448, augment: AugmentConfig = AugmentConfig(),  # noqa: B008
                 mirror_axis: float | None = None, seed: int = 0):
        super().__init__()
        self.shards, self.batch_size, self.num_workers = Path(shards), batch_size, num_workers
        self.train_batches, self.val_batches, self.shuffle_buffer = train_batches, val_batches, shuffle_buffer
        self.output_size, self.input_size = output_size, input_size
        self.augment = augment
        self.mirror_axis, self.seed = mirror_axis, seed
        self._train_loader: EpochLoader | None = None

    def setup(self, stage: str | None = None) -> None:
        from p3dmm.pipeline.shards.reader import read_index, shard_paths

        index = read_index(self.shards)
        self.train_urls = shard_paths(self.shards, "train")
        self.val_urls = shard_paths(self.shards, "val")
        if not self.train_urls:
            raise ValueError(f"{self.shards}: no train shards in index.json")
        if self.mirror_axis is None:
            self.mirror_axis = mirror_axis_of(index["flame_dir"])

    def _loader(self, dataset: ShardStream, workers: int) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=workers, collate_fn=_collate,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                          drop_last=dataset.train)

    def train_dataloader(self) -> EpochLoader:
        if self._train_loader is None:
            rank, world = _rank_world()
            if len(self.train_urls) < world:
                raise ValueError(f"{self.shards}: {len(self.train_urls)} train shards cannot feed {world} ranks "
                                 "disjointly; render with a smaller --samples_per_shard")
            workers = max(0, min(self.num_workers, len(self.train_urls[rank::world])))
            transform = SampleTransform(self.input_size, self.output_size, self.augment, self.mirror_axis)
            stream = ShardStream(self.train_urls, transform, train=True, shuffle_buffer=self.shuffle_buffer,
                                 seed=self.seed, rank=rank, world=world)
            self._train_loader = EpochLoader(self._loader(stream, workers), self.train_batches)
        return self._train_loader

    def val_dataloader(self):
        if not self.val_urls:
            return []
        rank, world = _rank_world()
        transform = SampleTransform(self.input_size, self.output_size, None, self.mirror_axis)
        stream = ShardStream(self.val_urls, transform, train=False, seed=self.seed, rank=rank, world=world)
        loader = DataLoader(stream, batch_size=self.batch_size, num_workers=0, collate_fn=_collate)
        return EpochLoader(loader, self.val_batches, endless=False) if self.val_batches else loader
