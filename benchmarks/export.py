"""CPU latency of a fitted detector: torch eager vs the exported ONNX graph in onnxruntime.

    python benchmarks/export.py --preset tiny-clip                      # smoke run, seconds
    python benchmarks/export.py --preset efficientnet-lite0 --image-size 224 --backbone-weights auto

Fits FeatureNorm and PatchCore (pretrained features, random projectors: latency does not
depend on what was learned) on synthetic normal images, exports each with ``export_onnx``,
checks parity, and times ``ADPretrainDetectorModel.score`` (torch, ``no_grad``) against the
onnxruntime (``ExportedDetector``, fed image by image as deployed) on the same batches, batch 1
and 16, same thread count for both.
Prints one markdown table: milliseconds per image (median of ``--repeats`` timed runs after
``--warmup`` untimed ones) side by side.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable

import torch

from latency import median_seconds  # the benchmarks' one timer

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.deployment import fit_detector
from adpretrain_hf.export import EXPORTABLE_METHODS, check_exported, export_onnx
from adpretrain_hf.exported_detector import ExportedDetector

BATCH_SIZES = (1, 16)


def median_ms_per_image(run: Callable[[], object], batch: int, warmup: int, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, in milliseconds per image."""
    return 1000.0 * median_seconds(run, warmup, repeats) / batch


def build_model(args: argparse.Namespace) -> ADPretrainModel:
    overrides = {"image_size": args.image_size} if args.image_size else {}
    torch.manual_seed(0)
    model = ADPretrainModel(ADPretrainConfig.from_preset(args.preset, **overrides)).eval()
    if args.backbone_weights:
        model.load_backbone_weights(None if args.backbone_weights == "auto" else args.backbone_weights)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-clip")
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's input size")
    parser.add_argument("--backbone-weights", default=None, help="'auto' (the preset's real weights) or a file/folder")
    parser.add_argument("--train-images", type=int, default=16)
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="comma-separated timed batch sizes")
    parser.add_argument("--fit-batch-size", type=int, default=8, help="images per feature batch while fitting (memory)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = build_model(args)
    size = model.config.image_size
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(args.train_images, 3, size, size, generator=generator)
    batches = {b: torch.randn(b, 3, size, size, generator=generator) for b in map(int, args.batch_sizes.split(","))}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in EXPORTABLE_METHODS:
            detector = fit_detector(model, method, train, progress=False, batch_size=args.fit_batch_size)
            path = export_onnx(detector, Path(tmp) / f"{method}.onnx")
            runner = ExportedDetector(path, threads=args.threads)  # image by image, as deployed
            for batch, pixels in batches.items():
                diffs = check_exported(detector, path, pixels, runner=runner)
                with torch.no_grad():
                    eager = median_ms_per_image(lambda: detector.score(pixels), batch, args.warmup, args.repeats)
                ort_ms = median_ms_per_image(lambda: runner(pixels.numpy()), batch, args.warmup, args.repeats)
                bank = int(detector.detector.memory_bank.shape[0]) if method == "patchcore" else 0
                rows.append((method, batch, eager, ort_ms, diffs["anomaly_map"], diffs["score"], bank))

    print(f"\npreset {args.preset}, {size}x{size} px, backbone weights: {args.backbone_weights or 'random'}, "
          f"{args.threads} threads, torch {torch.__version__}\n")
    print("| method | batch | torch eager ms/img | onnxruntime ms/img | speed-up | max abs diff map / score | memory bank rows |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method, batch, eager, ort_ms, dmap, dscore, bank in rows:
        print(f"| {method} | {batch} | {eager:.2f} | {ort_ms:.2f} | {eager / ort_ms:.2f}x | {dmap:.1e} / {dscore:.1e} | {bank or '-'} |")


if __name__ == "__main__":
    main()
