"""Training benchmark and quality check of the priors on CPU (GPU figures with --gpu on a GPU machine).

    .venv/bin/python bench/train.py [--steps 1500] [--quality] [--gpu]

Always: the tiny config's training img/s on this CPU (one process, all cores) and the loader's samples/s
(the training decode + augmentation, one worker), from synthetic FLAME shards at 64 px.
--quality: trains the tiny network on shards of `--train-subjects` synthetic heads and evaluates on
`--val-subjects` held-out heads: normal angular error (mean, median, % < 11.25/22.5/30 deg) and UV error
(median, p90, px at 512), next to the baseline measured in the same run: the per-pixel mean of the
training targets (the best constant prediction per pixel). Goal: medians at most half the baseline's.
--gpu: ViT-B/14 at 448 px in bf16, img/s per GPU with and without torch.compile, MFU, peak memory,
and whether the loader (8 workers) keeps up.
Prints rows `case ours baseline ratio device`, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def shards_for(folder: Path, train_subjects: int, val_subjects: int, views: int, size: int) -> tuple[Path, Path]:
    from p3dmm.flame.synth import write_synthetic_flame
    from p3dmm.training.synthetic import write_flame_shards

    flame = folder / "flame"
    write_synthetic_flame(flame, n_vertices=2000, seed=1)
    shards = folder / "shards"
    write_flame_shards(shards, flame, train_subjects=train_subjects, val_subjects=val_subjects, views=views,
                       size=size, samples_per_shard=16, seed=1)
    return flame, shards


def tiny_config(size: int):
    from p3dmm.training.network import NetworkConfig

    return NetworkConfig(backbone="vit_small_patch14_dinov2", output_size=size, outputs=("normal", "uv"),
                         shared_backbone=True, head_width=64, head_depth=2, head_heads=4,
                         backbone_kwargs={"depth": 4, "embed_dim": 96, "num_heads": 3})


def loader_rate(shards: Path, size: int, batches: int = 40) -> float:
    from p3dmm.training.data import ShardDataModule

    dm = ShardDataModule(shards=str(shards), batch_size=8, num_workers=1, train_batches=batches,
                         output_size=size, input_size=size // 16 * 14, shuffle_buffer=16)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)
    start = time.perf_counter()
    n = sum(b["image"].shape[0] for b in it)
    return n / (time.perf_counter() - start)


def train_rate(shards: Path, size: int, steps: int = 30) -> float:
    import lightning as L

    from p3dmm.training.data import ShardDataModule
    from p3dmm.training.module import PriorModule

    times = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *args):
            times.append(time.perf_counter())

    model = PriorModule(network=tiny_config(size), panels_every=0)
    dm = ShardDataModule(shards=str(shards), batch_size=8, num_workers=1, train_batches=steps,
                         output_size=size, input_size=size // 16 * 14, shuffle_buffer=16)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[Clock()])
    trainer.fit(model, dm)
    return 8 * (len(times) - 5) / (times[-1] - times[4])


def quality(shards: Path, size: int, steps: int) -> dict:
    import lightning as L

    from p3dmm.training import objective as O
    from p3dmm.training.augment import AugmentConfig
    from p3dmm.training.data import ShardDataModule
    from p3dmm.training.module import PriorModule

    L.seed_everything(0)
    model = PriorModule(network=tiny_config(size), lr_head=1e-3, lr_backbone=5e-4, warmup_steps=50, panels_every=0)
    dm = ShardDataModule(shards=str(shards), batch_size=16, num_workers=1, train_batches=steps,
                         output_size=size, input_size=size // 16 * 14, shuffle_buffer=64,
                         augment=AugmentConfig(crop_scale=(0.9, 1.0)))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    start = time.perf_counter()
    trainer.fit(model, dm)
    train_s = time.perf_counter() - start

    # baseline: per-pixel mean of the training targets (no augmentation)
    base_dm = ShardDataModule(shards=str(shards), batch_size=16, num_workers=0, output_size=size,
                              input_size=size // 16 * 14, augment=AugmentConfig(enabled=False))
    base_dm.setup("fit")
    base_dm.val_urls, val_urls = base_dm.train_urls, base_dm.val_urls  # read the train split once, in order
    n_sum, uv_sum, n_cnt, uv_cnt = 0, 0, 0, 0
    for batch in base_dm.val_dataloader():
        m = batch["mask"][:, None]
        n_sum = n_sum + (batch["normal"] * m).sum(0)
        uv_sum = uv_sum + (batch["uv"] * m).sum(0)
        n_cnt = n_cnt + m.sum(0)
        uv_cnt = uv_cnt + m.sum(0)
    mean_normal = torch.nn.functional.normalize(n_sum / n_cnt.clamp(min=1), dim=0)
    mean_uv = uv_sum / uv_cnt.clamp(min=1)
    base_dm.val_urls = val_urls

    hist = {k: torch.zeros(len(b) - 1, dtype=torch.float64) for k, b in
            (("a", O.ANGLE_BINS), ("u", O.UV_PX_BINS), ("ba", O.ANGLE_BINS), ("bu", O.UV_PX_BINS))}
    sums = {"a": 0.0, "ba": 0.0}
    model.eval()
    with torch.no_grad():
        for batch in base_dm.val_dataloader():
            pred = model(batch["image"])
            for i in range(batch["image"].shape[0]):
                mask = batch["mask"][i] > 0
                face = mask & (batch["face"][i] > 0)
                for tag, pn, pu in (("", pred["normal"][i], pred["uv"][i]), ("b", mean_normal, mean_uv)):
                    err = O.angular_error_deg(pn[None], batch["normal"][i : i + 1])[0][mask]
                    hist[tag + "a"] += O.histogram(err, O.ANGLE_BINS)
                    sums[tag + "a"] += float(err.double().sum())
                    hist[tag + "u"] += O.histogram(O.uv_error_px(pu[None], batch["uv"][i : i + 1])[0][face], O.UV_PX_BINS)

    def summary(tag: str) -> dict:
        a, u = hist[tag + "a"], hist[tag + "u"]
        ab, ub = O.ANGLE_BINS.double(), O.UV_PX_BINS.double()
        return {"normal_mean_deg": sums[tag + "a"] / float(a.sum()),
                "normal_median_deg": O.quantile_from_histogram(a, ab, 0.5),
                **{f"normal_within_{t:g}": O.fraction_below(a, ab, t) for t in (11.25, 22.5, 30.0)},
                "uv_median_px": O.quantile_from_histogram(u, ub, 0.5), "uv_p90_px": O.quantile_from_histogram(u, ub, 0.9)}

    return {"model": summary(""), "baseline": summary("b"), "steps": steps, "train_seconds": train_s}


def gpu_figures(folder: Path) -> dict:
    """ViT-B/14 at 448 px (512 px maps), bf16 autocast, one GPU: img/s with and without torch.compile, MFU, memory."""
    from p3dmm.training.network import NetworkConfig, PriorNet

    out = {}
    config = NetworkConfig(backbone="vit_base_patch14_dinov2", output_size=512, outputs=("normal",))
    for compiled in (False, True):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        net = PriorNet(config).cuda()
        step_net = torch.compile(net) if compiled else net
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
        batch = 32
        x = torch.rand(batch, 3, 448, 448, device="cuda")
        target = torch.nn.functional.normalize(torch.randn(batch, 3, 512, 512, device="cuda"), dim=1)

        def step(step_net=step_net, x=x, target=target, opt=opt):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = (step_net(x)["normal"] - target).abs().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(5):
            step()
        torch.cuda.synchronize()
        n = 20
        start = time.perf_counter()
        for _ in range(n):
            step()
        torch.cuda.synchronize()
        rate = n * batch / (time.perf_counter() - start)
        # FLOPs per image: 6 x params x tokens for the ViT (fwd + bwd) + the head, counted by the flop counter
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = (net(x[:1])["normal"] - target[:1]).abs().mean()
            loss.backward()
        opt.zero_grad(set_to_none=True)
        flops = counter.get_total_flops()
        peak_tflops = 989e12  # H100 SXM dense bf16
        out["compile" if compiled else "eager"] = {
            "img_per_s": rate, "mfu": rate * flops / peak_tflops, "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9,
            "batch": batch, "flops_per_img": flops}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train-subjects", type=int, default=40)
    ap.add_argument("--val-subjects", type=int, default=8)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = Path(tempfile.mkdtemp())
    _, shards = shards_for(folder, args.train_subjects, args.val_subjects, args.views, args.size)
    results: dict = {"threads": torch.get_num_threads()}
    rows = []
    results["loader samples/s (1 worker)"] = loader_rate(shards, args.size)
    results["train img/s (tiny, CPU)"] = train_rate(shards, args.size)
    rows.append(f"{'loader samples/s, 1 worker, ' + str(args.size) + ' px':<44} {results['loader samples/s (1 worker)']:8.1f}")
    rows.append(f"{'train img/s, tiny config, CPU':<44} {results['train img/s (tiny, CPU)']:8.1f}   "
                f"(loader/train ratio {results['loader samples/s (1 worker)'] / results['train img/s (tiny, CPU)']:.1f})")
    if args.quality:
        q = quality(shards, args.size, args.steps)
        results["quality"] = q
        for key in q["model"]:
            ours, base = q["model"][key], q["baseline"][key]
            rows.append(f"{key:<44} {ours:8.2f}   baseline (per-pixel mean target) {base:8.2f}   ratio {ours / base:5.2f}")
        rows.append(f"{'training':<44} {q['steps']} steps, {q['train_seconds']:.0f} s")
    if args.gpu and torch.cuda.is_available():
        g = gpu_figures(folder)
        results["gpu"] = g
        for k, v in g.items():
            rows.append(f"ViT-B/14 448px bf16 {k:<24} {v['img_per_s']:8.1f} img/s  MFU {v['mfu'] * 100:.1f}%  "
                        f"peak {v['peak_mem_gb']:.1f} GB  batch {v['batch']}")
    print(f"device: {'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, "
          f"{torch.get_num_threads()} threads, shards {args.train_subjects}+{args.val_subjects} subjects x {args.views} views")
    for row in rows:
        print(row)
    print(json.dumps(results, default=float))


if __name__ == "__main__":
    main()
