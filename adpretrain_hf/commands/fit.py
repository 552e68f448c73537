"""``adpretrain fit``: fit a detector on normal images and save it as one deployable folder.

The folder (``ADPretrainDetectorModel.save_pretrained``) holds the feature model, the
method's fitted tensors, the calibration (with ``--val``), the image processor and the code,
including the ``anomaly-detection`` pipeline, so it loads with ``pipeline("anomaly-detection",
model=DIR)`` here and with ``trust_remote_code=True`` where adpretrain_hf is not installed.
"""

from __future__ import annotations

import argparse
import json

from adpretrain_hf.commands._deploy_io import resolve_device

HELP = "fit an anomaly detector (patchcore, featurenorm, padim, ...) on normal images and save it as a deployable folder"
# copies of the modeling constants, so --help imports no torch; tests/commands/test_fit.py checks they match
METHODS = ("featurenorm", "patchcore", "padim", "cflow", "glass", "uniad")
DEFAULT_QUANTILE = 0.99
FEATURE_KINDS = ("pretrained", "backbone")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="ADPretrain checkpoint folder or Hub id (the feature source)")
    parser.add_argument("--method", required=True, choices=METHODS, help="detector to fit")
    parser.add_argument("--train", required=True, help="folder (searched recursively) or quoted glob of NORMAL training images")
    parser.add_argument("--val", default=None, help="calibration folder: normal images only, or good/ + defect sub-folders (masks found MVTec-style in ground_truth/)")
    parser.add_argument("--output", required=True, help="detector folder to write")
    parser.add_argument("--features", default="pretrained", choices=FEATURE_KINDS, help="ADPretrain features (w/, default) or the backbone's own (w/o)")
    parser.add_argument("--references", default=None, help="normal reference images for the residuals (default: the first 8 training images)")
    parser.add_argument(
        "--layer-positions", default=None,
        help="comma-separated 0-based positions in the model's list of tapped layers, e.g. 0,2 (default: the method's)",
    )
    parser.add_argument("--layers", dest="old_layers", default=None, help=argparse.SUPPRESS)  # old name of --layer-positions
    parser.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE, help=f"threshold quantile of normal validation scores (default {DEFAULT_QUANTILE})")
    parser.add_argument("--margin", type=float, default=0.0, help="normal-only --val: add this fraction of the score range to the threshold (e.g. --quantile 1 --margin 0.1)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="detector option, e.g. coreset_ratio=0.1 (repeatable; values read as JSON)")
    parser.add_argument("--device", type=resolve_device, default="auto", help="auto (CUDA when present), cpu, cuda:0, ...")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _options(pairs: list[str]) -> dict:
    from adpretrain_hf.cli import CommandError

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--option {pair!r} is not KEY=VALUE", "e.g. --option coreset_ratio=0.1")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value  # a bare word, e.g. mode=per_layer
    return options


def _layer_positions(args: argparse.Namespace) -> list[int] | None:
    """``--layer-positions 0,2`` (or the deprecated ``--layers``, which warns) as ints."""
    import warnings

    from adpretrain_hf.cli import CommandError

    text = args.layer_positions
    if args.old_layers is not None:
        if text is not None:
            raise CommandError("both --layer-positions and --layers (its old name) given", "pass only --layer-positions")
        warnings.warn("adpretrain fit: --layers is deprecated and will be removed in the next release: use "
                      "--layer-positions (same values)", FutureWarning, stacklevel=2)
        text = args.old_layers
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise CommandError(f"--layer-positions {text!r} is not a comma-separated list of integers", "e.g. --layer-positions 0,2") from None


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from PIL import Image

    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.commands._deploy_io import find_images, load_validation_set
    from adpretrain_hf.deployment import fit_detector

    if not 0.0 < args.quantile <= 1.0:
        raise CommandError(f"--quantile {args.quantile} is outside (0, 1]", "e.g. --quantile 0.99")
    if args.margin < 0:
        raise CommandError(f"--margin {args.margin} is negative", "use 0 (default) or a positive fraction of the score range, e.g. 0.1")
    if not (Path(args.model) / "config.json").is_file() and Path(args.model).exists():
        raise CommandError(f"{args.model} is not a checkpoint folder (no config.json)", "point --model at a save_pretrained folder or a Hub id")
    _, train = find_images(args.train, "train")
    references = find_images(args.references, "references")[1] if args.references else None
    val = load_validation_set(args.val) if args.val else None
    layer_positions = _layer_positions(args)
    device = args.device  # resolved and checked by argparse
    start = time.perf_counter()
    masks = [Image.open(m) if m is not None else None for m in val.masks] if val is not None and val.masks else None  # one mask rule downstream
    detector = fit_detector(
        args.model, args.method, [str(p) for p in train], feature_kind=args.features, layer_positions=layer_positions,
        references=[str(p) for p in references] if references else None,
        val_images=[str(p) for p in val.images] if val else None, val_labels=val.labels if val else None, val_masks=masks,
        quantile=args.quantile, margin=args.margin, method_kwargs=_options(args.option), device=device, batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    out = Path(args.output)
    detector.save_pretrained(out)  # atomic; ships the anomaly-detection pipeline code too
    config = detector.config
    print(f"{args.method} ({args.features} features) fitted on {len(train)} images in {time.perf_counter() - start:.1f} s on {device}: {out}")
    if val is None:
        print("not calibrated (no --val): predictions get scores and maps, no labels or masks")
    else:
        kind = f"labelled: {len(val.defects)} defect types" if val.labels is not None else "normal only"
        if val.missing_masks:
            print(f"note: {val.missing_masks} defect images have no ground_truth mask: pixel threshold from normal pixels")
        print(f"calibrated on {len(val.images)} images ({kind}, {config.calibration}): image threshold {config.image_threshold:.6g}, "
              f"pixel threshold {config.pixel_threshold:.6g}, score range [{config.score_min:.6g}, {config.score_max:.6g}]")
    print(f"next: adpretrain predict --detector {out} --images DIR --output OUT")
    return 0
