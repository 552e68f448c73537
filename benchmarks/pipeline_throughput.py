"""Throughput of ``pipeline("anomaly-features")`` against the bare model forward, in one run.

    python benchmarks/pipeline_throughput.py                                   # tiny-clip, CPU
    python benchmarks/pipeline_throughput.py --preset clip-base --num-images 16 --batch-size 8
    python benchmarks/pipeline_throughput.py --preset clip-large --dtype bf16 --batch-size 64   # GPU

Both paths use the same model (random weights of the preset's real shape), the same 8-shot
reference bank and the same images:

- ``model forward``: ``model(pixel_values, reference_features=bank)`` on pixel values that are
  already processed and on the device — the compute ceiling.
- ``image processor``: the processor alone on the images (PIL resize/crop/normalise), the
  CPU work a pipeline adds in front.
- ``pipeline``: images in, per-image dicts out (load, process, forward, copy to CPU, map the
  anomaly map back to each image's size); references given when the pipeline is built, so the
  bank is computed once, before timing.

Prints a Markdown table with img/s and the ratio to the model forward (best of ``--repeats``).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import torch
from transformers import pipeline

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.modeling.image_processing_adpretrain import processor_for
from adpretrain_hf.modeling.pipeline_anomaly_features import OUTPUTS, resolve_dtype

REFERENCE_SHOTS = 8  # the paper's evaluation setting


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-clip", help="model preset (random weights of its shape)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-images", type=int, default=32, help="images per timed pass")
    parser.add_argument("--image-size", type=int, default=None, help="side of the input images (default: the preset's, so no resize)")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="fp32 / bf16 / fp16 / auto (bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--output", default="features,anomaly_map,score", help=f"pipeline outputs, comma-separated from {OUTPUTS}")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for the pipeline's preprocessing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args()


def best_rate(run: Callable[[], None], count: int, repeats: int, device: torch.device) -> float:
    """Images per second of the fastest of ``repeats`` timed passes (one untimed warm-up first)."""
    run()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return count / min(times)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = ADPretrainModel(ADPretrainConfig.from_preset(args.preset)).eval()
    dtype = resolve_dtype(args.dtype, device, model.dtype)
    model.to(device, dtype)
    processor = processor_for(model)
    side = args.image_size or model.config.image_size
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(args.num_images)]
    references = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(REFERENCE_SHOTS)]

    pixel_values = processor(images, return_tensors="pt")["pixel_values"].to(device, dtype)
    with torch.no_grad():
        bank = model.compute_reference_bank(processor(references, return_tensors="pt")["pixel_values"].to(device, dtype))

    def forward() -> None:
        with torch.no_grad():
            for start in range(0, len(images), args.batch_size):
                model(pixel_values[start : start + args.batch_size], reference_features=bank)

    pipe = pipeline("anomaly-features", model=model, image_processor=processor, device=device, dtype=dtype, references=references)
    outputs = [name.strip() for name in args.output.split(",") if name.strip()]

    rows = [
        ("model forward (processed pixels on device)", best_rate(forward, len(images), args.repeats, device)),
        ("image processor alone (CPU)", best_rate(lambda: processor(images, return_tensors="pt"), len(images), args.repeats, device)),
        (
            f"pipeline (images in, {'+'.join(outputs)} out)",
            best_rate(lambda: pipe(images, batch_size=args.batch_size, num_workers=args.num_workers, output=outputs), len(images), args.repeats, device),
        ),
    ]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"preset {args.preset}, {name}, {str(dtype).replace('torch.', '')}, batch {args.batch_size}, "
          f"{args.num_images} images of {side}x{side}, {REFERENCE_SHOTS}-shot bank, best of {args.repeats}\n")
    print("| path | img/s | ratio to model forward |")
    print("| --- | ---: | ---: |")
    base = rows[0][1]
    for label, rate in rows:
        print(f"| {label} | {rate:,.1f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
