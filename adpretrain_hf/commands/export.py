"""``adpretrain export``: a fitted detector folder -> ONNX or OpenVINO IR, checked against torch.

Exports ``pixel_values [B, 3, H, W] -> (anomaly_map [B, H, W], score [B])`` (FeatureNorm and
PatchCore; thresholds stay outside the graph) and prints the parity check: onnxruntime (or
OpenVINO) and torch on the same processed images, max absolute differences.
"""

from __future__ import annotations

import argparse

HELP = "export a fitted detector folder to ONNX or OpenVINO and print the runtime-vs-torch parity check"
FORMATS = ("onnx", "openvino")  # adpretrain_hf.export.FORMATS
PARITY_IMAGES = 2  # random images pushed through both graphs for the check
PARITY_SEED = 0
DEFAULT_OPSET = 17  # adpretrain_hf.export.DEFAULT_OPSET, copied so --help imports no torch (tests/commands/test_export.py checks)
OPENVINO_OPSET = 18  # adpretrain_hf.export.OPENVINO_OPSET, likewise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", required=True, help="folder written by `adpretrain fit`")
    parser.add_argument("--format", default="onnx", choices=FORMATS,
                        help="export format: onnx (onnxruntime) or openvino (OpenVINO IR: model.xml + model.bin)")
    parser.add_argument("--output", default=None,
                        help="file (onnx) or folder (openvino) to write (default: DETECTOR/model.onnx, DETECTOR/openvino/)")
    parser.add_argument("--batch-size", type=int, default=None, help="fixed batch size (default: dynamic)")
    parser.add_argument("--opset", type=int, default=None,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; {OPENVINO_OPSET} for openvino, which converts opset 17 wrongly)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adpretrain_hf.cli import CommandError

    folder = Path(args.detector)
    if not (folder / "config.json").is_file():  # checked before the heavy imports below
        raise CommandError(f"{args.detector} is not a detector folder (no config.json)", "write one with: adpretrain fit ... --output DIR")

    import numpy as np
    from PIL import Image

    from adpretrain_hf.export import check_exported, export_onnx, export_openvino
    from adpretrain_hf.exported_detector import EXPORT_NAMES
    from adpretrain_hf.modeling.image_processing_adpretrain import processor_for
    from adpretrain_hf.modeling.modeling_detector_adpretrain import ADPretrainDetectorModel

    detector = ADPretrainDetectorModel.from_pretrained(folder).eval()
    openvino = args.format == "openvino"
    export = export_openvino if openvino else export_onnx
    opset = args.opset or (OPENVINO_OPSET if openvino else DEFAULT_OPSET)
    target = Path(args.output) if args.output else folder / EXPORT_NAMES[args.format]
    path = export(detector, target, batch_size=args.batch_size, opset=opset)
    processor = processor_for(detector)
    height, width = processor.output_size
    rng = np.random.default_rng(PARITY_SEED)
    images = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(args.batch_size or PARITY_IMAGES)]
    parity = check_exported(detector, path, processor(images, return_tensors="pt")["pixel_values"])
    size = sum(p.stat().st_size for p in (path, path.with_suffix(".bin")) if p.is_file())
    print(f"{detector.config.method} detector exported to {path} ({size / 2**20:.1f} MiB, opset {opset}, "
          f"batch {'dynamic' if args.batch_size is None else args.batch_size})")
    print(f"parity on {len(images)} images ({'openvino' if openvino else 'onnxruntime'} vs torch): max |d anomaly_map| = {parity['anomaly_map']:.3g} "
          f"(map values up to {parity['map_scale']:.3g}), max |d score| = {parity['score']:.3g}")
    return 0
