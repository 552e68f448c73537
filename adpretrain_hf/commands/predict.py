"""``adpretrain predict``: run a fitted detector folder over images, through the pipeline.

Writes into ``--output``:

- ``predictions.csv``: ``path, score, normalized_score, label`` per image (the last two empty
  for an uncalibrated detector);
- ``overlays/<sub>/<stem>_<ext>.png``: the anomaly map over the image with a colour bar (one
  colour scale for the whole run, so overlays compare) and the predicted-mask contour;
- with ``--save-maps``: ``maps/<sub>/<stem>_<ext>.npy``, the raw ``[H, W]`` float32 map at the
  image's own size.

Output names mirror the path relative to the input root, so ``a.png``/``a.jpg`` and equal
names in different sub-folders never clash.
"""

from __future__ import annotations

import argparse

from adpretrain_hf.commands._deploy_io import resolve_device

HELP = "score images with a fitted detector folder: predictions.csv, overlays with colour bar and mask contour, raw maps"
CSV_NAME = "predictions.csv"
CSV_COLUMNS = ("path", "score", "normalized_score", "label")
CHUNK_BATCHES = 4  # batches handed to the pipeline per call (the progress bar advances per call)
PNG_COMPRESS_LEVEL = 1  # overlays are previews: zlib level 1 encodes several times faster than the default 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", required=True, help="folder written by `adpretrain fit` (or a Hub id)")
    parser.add_argument("--images", required=True, help="folder (searched recursively) or quoted glob, e.g. 'line3/**/*.jpg'")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--save-maps", action="store_true", help="also write raw anomaly maps as .npy")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay images")
    parser.add_argument("--device", type=resolve_device, default="auto", help="auto (CUDA when present), cpu, cuda:0, ...")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _csv_value(value) -> str:
    if value is None:
        return ""
    return str(int(value)) if isinstance(value, bool) else f"{float(value):.6g}"


def run(args: argparse.Namespace) -> int:
    import csv
    import math
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm
    from transformers import pipeline

    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.commands._deploy_io import find_images, output_file
    from adpretrain_hf.modeling.tasks_adpretrain import ANOMALY_DETECTION_TASK
    from adpretrain_hf.overlays import render_overlay

    if args.batch_size < 1:
        raise CommandError(f"--batch-size {args.batch_size} must be >= 1", "e.g. --batch-size 16")
    detector_dir = Path(args.detector)
    if detector_dir.exists() and not (detector_dir / "config.json").is_file():
        raise CommandError(f"{args.detector} is not a detector folder (no config.json)", "write one with: adpretrain fit ... --output DIR")
    root, images = find_images(args.images, "images")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    device = args.device  # resolved and checked by argparse
    detect = pipeline(ANOMALY_DETECTION_TASK, model=args.detector, device=device)
    # overlays share one colour scale, known only after the last map: keep maps and masks on disk till then
    scratch = None if args.no_overlays else tempfile.TemporaryDirectory(prefix="adpretrain-maps-")
    maps_dir = out / "maps" if args.save_maps else (Path(scratch.name) / "maps" if scratch is not None else None)
    masks_dir = Path(scratch.name) / "masks" if scratch is not None else None
    low, high = math.inf, -math.inf
    chunk = args.batch_size * CHUNK_BATCHES
    flagged = 0
    try:
        with open(out / CSV_NAME, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            bar = tqdm(total=len(images), desc="predict", unit="img", disable=args.no_progress)
            for start in range(0, len(images), chunk):
                paths = images[start : start + chunk]
                results = detect([str(p) for p in paths], batch_size=args.batch_size, return_tensors="np")
                for path, result in zip(paths, results):
                    writer.writerow([str(path), *(_csv_value(result[k]) for k in CSV_COLUMNS[1:])])
                    flagged += bool(result["label"])
                    amap = np.asarray(result["anomaly_map"], dtype=np.float32)
                    low, high = min(low, float(amap.min())), max(high, float(amap.max()))
                    array_name = output_file(path, root, ".npy")
                    for folder, value in ((maps_dir, amap), (masks_dir, result["pred_mask"])):
                        if folder is not None and value is not None:  # no pred_mask when uncalibrated
                            target = folder / array_name
                            target.parent.mkdir(parents=True, exist_ok=True)
                            np.save(target, value)
                bar.update(len(paths))
            bar.close()
        if not args.no_overlays:
            for path in tqdm(images, desc="overlays", unit="img", disable=args.no_progress):
                array_name = output_file(path, root, ".npy")
                amap = np.load(maps_dir / array_name)
                with Image.open(path) as image:
                    rgb = image.convert("RGB")
                mask_file = masks_dir / array_name
                mask = np.load(mask_file) if mask_file.is_file() else None
                target = out / "overlays" / output_file(path, root, ".png")
                target.parent.mkdir(parents=True, exist_ok=True)
                render_overlay(rgb, amap, vmin=low, vmax=high, pred_mask=mask).save(target, compress_level=PNG_COMPRESS_LEVEL)
    finally:
        if scratch is not None:
            scratch.cleanup()
    calibrated = detect.model.config.image_threshold is not None
    verdict = f"{flagged} flagged anomalous" if calibrated else "detector not calibrated: no labels"
    print(f"{len(images)} images scored on {device} ({verdict}): {out / CSV_NAME}"
          + ("" if args.no_overlays else f", overlays in {out / 'overlays'}") + (f", maps in {maps_dir}" if args.save_maps else ""))
    return 0
