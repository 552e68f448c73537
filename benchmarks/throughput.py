"""Model forward throughput next to the bare backbone, in the same process.

    python benchmarks/throughput.py --preset clip-large --dtype bf16 --batch-size 64   # on a GPU
    python benchmarks/throughput.py --preset tiny-clip --batch-size 8                  # CPU smoke

Random weights of the real shape (the preset's architecture); an 8-shot reference bank is
set once, as in evaluation. Prints a markdown table: img/s, ms/batch, peak memory and the
ratio of the full model to the backbone alone (the ceiling).
"""

from __future__ import annotations

import argparse
import time

import torch

from adpretrain_hf import ADPretrainConfig, ADPretrainModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _time(fn, warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def _peak_mib(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return f"{peak:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-clip")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shots", type=int, default=8, help="reference images in the bank")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    config = ADPretrainConfig.from_preset(args.preset)
    model = ADPretrainModel(config).to(device=device, dtype=dtype).eval()
    size = config.image_size
    images = torch.randn(args.batch_size, 3, size, size, device=device, dtype=dtype)
    model.set_references(torch.randn(args.shots, 3, size, size, device=device, dtype=dtype))

    rows = []
    with torch.inference_mode():
        t_backbone = _time(lambda: model.backbone(images), args.warmup, args.iters, device)
        mem_backbone = _peak_mib(device)
        t_model = _time(lambda: model(images), args.warmup, args.iters, device)
        mem_model = _peak_mib(device)
    rows.append(("backbone only", t_backbone, mem_backbone))
    rows.append((f"ADPretrain forward ({args.shots}-shot bank, projectors, map)", t_model, mem_model))

    print(f"\npreset={args.preset} device={device} dtype={args.dtype} batch={args.batch_size} image={size}\n")
    print("| what | img/s | ms/batch | peak MiB | ratio to backbone |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, seconds, mem in rows:
        print(f"| {name} | {args.batch_size / seconds:,.1f} | {seconds * 1e3:,.1f} | {mem} | {t_backbone / seconds:.2f} |")


if __name__ == "__main__":
    main()
