"""``adpretrain fit``: fit a detector on normal images and save it as one deployable folder.

The folder (``ADPretrainDetectorModel.save_pretrained``) holds the feature model, the
method's fitted tensors, the calibration (with ``--val``), the image processor and the code,
including the ``anomaly-detection`` pipeline, so it loads with ``pipeline("anomaly-detection",
model=DIR)`` here and with ``trust_remote_code=True`` where adpretrain_hf is not installed.
"""

from __future__ import annotations

import argparse
import json

from adpretrain_hf.commands._deploy_io import device_name, finite_float, image_input, model_source

HELP = "fit an anomaly detector (patchcore, featurenorm, padim, ...) on normal images and save it as a deployable folder"
# copies of the modeling constants, so --help imports no torch; tests/commands/test_fit.py checks they match
DEFAULT_QUANTILE = 0.99
FEATURE_KINDS = ("pretrained", "backbone")
IMAGES_HELP = "image files, folders (searched recursively) or quoted globs, e.g. 'line3/**/*.jpg'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=model_source, help="ADPretrain checkpoint folder or Hub id org/name (the feature source)")
    parser.add_argument("--method", required=True, help="detector to fit: a name of adpretrain_hf.detectors.DETECTORS, e.g. patchcore, featurenorm, padim")
    parser.add_argument("--train", required=True, nargs="+", type=image_input, metavar="IMAGES", help=f"NORMAL training images: {IMAGES_HELP}")
    parser.add_argument("--val", default=None, help="calibration folder: normal images only, or good/ + defect sub-folders (masks found MVTec-style in ground_truth/)")
    parser.add_argument("--output", required=True, help="detector folder to write")
    parser.add_argument("--features", default="pretrained", choices=FEATURE_KINDS, help="ADPretrain features (w/, default) or the backbone's own (w/o)")
    parser.add_argument("--references", default=None, nargs="+", type=image_input, metavar="IMAGES",
                        help=f"normal reference images for the residuals (default: the first 8 training images): {IMAGES_HELP}")
    parser.add_argument(
        "--layer-positions", default=None,
        help="comma-separated 0-based positions in the model's list of tapped layers, e.g. 0,2 (default: the method's)",
    )
    parser.add_argument("--quantile", type=_quantile, default=DEFAULT_QUANTILE, help=f"threshold quantile of normal validation scores, in (0, 1] (default {DEFAULT_QUANTILE})")
    parser.add_argument("--margin", type=_margin, default=0.0, help="normal-only --val: add this fraction (finite, >= 0) of the score range to the threshold (e.g. --quantile 1 --margin 0.1)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="detector option, e.g. coreset_ratio=0.1 (repeatable; values read as JSON)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when present), cpu, cuda:0, ...")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when an image could not be read (default: skip it, warn, list it in OUTPUT/errors.csv)")
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


def _layer_positions(text: str | None) -> list[int] | None:
    """``--layer-positions 0,2`` as ints."""
    from adpretrain_hf.cli import CommandError

    if not text:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise CommandError(f"--layer-positions {text!r} is not a comma-separated list of integers", "e.g. --layer-positions 0,2") from None


def _check_method(name: str) -> str:
    """``--method`` against the detector registry (imported here: it needs torch)."""
    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.detectors import DETECTORS

    if name.lower() not in DETECTORS:
        raise CommandError(f"--method {name!r} is not a detector", f"choose one of {', '.join(DETECTORS)}")
    return name.lower()


def _quantile(text: str) -> float:
    """argparse ``type=`` of ``--quantile``: a number in (0, 1]."""
    value = finite_float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 1]: e.g. --quantile 0.99")
    return value


def _margin(text: str) -> float:
    """argparse ``type=`` of ``--margin``: a finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative: use 0 (default) or a positive fraction of the score range, e.g. 0.1")
    return value


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from adpretrain_hf.commands._deploy_io import BatchErrors, gather_images, load_validation_set, readable, resolve_device
    from adpretrain_hf.deployment import fit_detector
    from adpretrain_hf.modeling.image_io_adpretrain import read_mask

    method = _check_method(args.method)
    layer_positions = _layer_positions(args.layer_positions)
    options = _options(args.option)
    _, train = gather_images(args.train)
    references = gather_images(args.references)[1] if args.references else None
    val = load_validation_set(args.val) if args.val else None
    device = resolve_device(args.device)
    errors = BatchErrors()
    train = readable(train, errors, "train", progress=not args.no_progress)
    if references:
        references = readable(references, errors, "references", progress=not args.no_progress)
    if val is not None:
        val = val.keep(readable(val.images, errors, "val", progress=not args.no_progress))
    start = time.perf_counter()
    masks = [read_mask(m) if m is not None else None for m in val.masks] if val is not None and val.masks else None  # one mask rule downstream
    detector = fit_detector(
        args.model, method, [str(p) for p in train], feature_kind=args.features, layer_positions=layer_positions,
        references=[str(p) for p in references] if references else None,
        val_images=[str(p) for p in val.images] if val else None, val_labels=val.labels if val else None, val_masks=masks,
        quantile=args.quantile, margin=args.margin, method_kwargs=options, device=device, batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    out = Path(args.output)
    detector.save_pretrained(out)  # atomic; ships the anomaly-detection pipeline code too
    config = detector.config
    print(f"{method} ({args.features} features) fitted on {len(train)} images in {time.perf_counter() - start:.1f} s on {device}: {out}")
    if val is None:
        print("not calibrated (no --val): predictions get scores and maps, no labels or masks")
    else:
        kind = f"labelled: {len(val.defects)} defect types" if val.labels is not None else "normal only"
        if val.missing_masks:
            print(f"note: {val.missing_masks} defect images have no ground_truth mask: pixel threshold from normal pixels")
        print(f"calibrated on {len(val.images)} images ({kind}, {config.calibration}): image threshold {config.image_threshold:.6g}, "
              f"pixel threshold {config.pixel_threshold:.6g}, score range [{config.score_min:.6g}, {config.score_max:.6g}]")
    errors.report(out, len(train))
    print(f"next: adpretrain predict --detector {out} --images DIR --output OUT")
    return errors.exit_code(args.strict)
