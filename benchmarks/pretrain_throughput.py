"""Pretraining throughput next to its ceiling, in one process.

    python benchmarks/pretrain_throughput.py --preset clip-large --batch-size 32 --dtype bf16   # GPU
    python benchmarks/pretrain_throughput.py --preset tiny-clip --batch-size 8                  # CPU smoke

One training step = both augmented views through the frozen backbone, residuals against
each sample's K references, the projectors forward + backward on both views, the Eq. 7
loss, an Adam step. Rows:

* backbone img/s: the bare frozen backbone (inference) on a batch: the ceiling's unit;
* ceiling samples/s: backbone img/s / (2 + K): what a sample costs if references are not cached;
* train samples/s without the reference cache (K reference images through the backbone per sample);
* train samples/s with the cache (reference tokens reused, as ``training/loop.py`` does).

Random weights of the real shape; K = 8 (the worst case of Rand(1, 4, 8)); ~10% anomalous patches.
"""

from __future__ import annotations

import argparse
import time

import torch

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.losses import ADPretrainLoss

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-clip")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="autocast dtype (weights stay fp32)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    device = torch.device(args.device)
    config = ADPretrainConfig.from_preset(args.preset)
    model = ADPretrainModel(config).to(device).train()
    size, b, k = config.image_size, args.batch_size, args.shots
    autocast = torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=DTYPES[args.dtype] is not None)
    views = [torch.randn(b, 3, size, size, device=device) for _ in range(2)]
    references = torch.randn(b * k, 3, size, size, device=device)
    labels = [torch.rand(b, h * w, device=device) < 0.1 for h, w in model.grid_sizes]
    centers = [torch.zeros(d, device=device) for d in model.backbone.feature_dims]
    loss_fn = ADPretrainLoss()
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-4)
    with autocast:
        cached_bank = [t.reshape(b, -1, t.shape[-1]) for t in model.backbone_features(references)]

    def step(use_cache: bool) -> None:
        # The model's public steps, as training/loop.py runs them (one backbone pass over both views).
        with autocast:
            both = model.backbone_features(torch.cat(views))
            bank = cached_bank if use_cache else [t.reshape(b, -1, t.shape[-1]) for t in model.backbone_features(references)]
        res = [model.residuals([t[:b] for t in both], bank), model.residuals([t[b:] for t in both], bank)]
        with autocast:
            f1, f2 = model.project(res[0]), model.project(res[1])
        out = loss_fn([f.float() for f in f1], [f.float() for f in f2], labels, centers)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    with torch.no_grad(), autocast:
        t_backbone = _timed(lambda: model.backbone(views[0]), args.iters, args.warmup, device)  # the bare backbone: the baseline
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_uncached = _timed(lambda: step(False), args.iters, args.warmup, device)
    t_cached = _timed(lambda: step(True), args.iters, args.warmup, device)
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "n/a (CPU)"
    backbone_ips = b / t_backbone
    ceiling = backbone_ips / (2 + k)

    print(f"\npreset={args.preset} device={device} autocast={args.dtype} batch={b} K={k} image={size} peak={peak}\n")
    print("| what | samples/s (img/s) | ms/step | ratio to ceiling |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| bare backbone (inference, img/s) | {backbone_ips:,.1f} | {t_backbone * 1e3:,.1f} | – |")
    print(f"| ceiling: backbone / (2 + K) | {ceiling:,.2f} | – | 1.00 |")
    print(f"| train step, references through the backbone | {b / t_uncached:,.2f} | {t_uncached * 1e3:,.1f} | {b / t_uncached / ceiling:.2f} |")
    print(f"| train step, cached reference tokens | {b / t_cached:,.2f} | {t_cached * 1e3:,.1f} | {b / t_cached / ceiling:.2f} |")
    print(f"\ncache speed-up: {t_uncached / t_cached:.2f}x")


if __name__ == "__main__":
    main()
