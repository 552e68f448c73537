"""``adpretrain predict``: run a fitted detector folder over images, through the pipeline.

``--images`` takes image files, folders (searched recursively) and quoted globs. Writes into
``--output`` (created only once the inputs and the detector are checked):

- ``predictions.csv``: ``path, score, normalized_score, label`` per image (the last two empty
  for an uncalibrated detector without ``--threshold``), written atomically at the end;
- ``overlays/<sub>/<stem>_<ext>.png``: the anomaly map over the image with a colour bar (one
  colour scale for the whole run, so overlays compare), the predicted-mask contour, and a caption
  with score, label and thresholds (saying why label and contour disagree when they do);
- with ``--save-maps``: ``maps/<sub>/<stem>_<ext>.npy``, the raw ``[H, W]`` float32 map at the
  image's own size; with ``--save-masks``: ``masks/<sub>/<stem>_<ext>.png``, the predicted mask
  (0 / 255);
- ``errors.csv`` when an image could not be read: it is skipped with a warning and counted in
  the summary; ``--strict`` makes that exit 1.

``--runtime onnx|openvino`` scores with the graph ``adpretrain export`` wrote into the detector
folder (CPU, one image per graph call) instead of torch: same outputs within float32 rounding;
a missing graph, or one older than the detector's weights, is refused naming the export command.

Output names mirror the path relative to the inputs' common folder, so ``a.png``/``a.jpg``,
``a.png``/``a.PNG`` and equal names in different sub-folders never clash.
"""

from __future__ import annotations

import argparse

from adpretrain_hf.commands._deploy_io import RUNTIMES, device_name, finite_float, image_input, model_source, positive_int

HELP = "score images with a fitted detector folder: predictions.csv, annotated overlays, raw maps, mask PNGs"
CSV_NAME = "predictions.csv"
CSV_COLUMNS = ("path", "score", "normalized_score", "label")
PNG_COMPRESS_LEVEL = 1  # overlays are previews: zlib level 1 encodes several times faster than the default 6



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", required=True, type=model_source, help="folder written by `adpretrain fit` (or a Hub id org/name)")
    parser.add_argument("--images", required=True, nargs="+", type=image_input, metavar="IMAGES",
                        help="image files, folders (searched recursively) or quoted globs, e.g. 'line3/**/*.jpg'")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--threshold", type=finite_float, default=None,
                        help="image threshold on the raw score for this run (default: the detector's calibrated one)")
    parser.add_argument("--save-maps", action="store_true", help="also write raw anomaly maps as .npy")
    parser.add_argument("--save-masks", action="store_true", help="also write predicted masks as PNG (0/255; needs a calibrated pixel threshold)")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay images")
    parser.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when present), cpu, cuda:0, ...")
    parser.add_argument("--runtime", default="torch", choices=RUNTIMES,
                        help="score with torch (default), or with the graph `adpretrain export --format onnx|openvino` wrote "
                        "into the detector folder (CPU, one image per graph call; openvino was ~1.5x faster than torch on one thread)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when an image could not be read (default: skip it, warn, list it in OUTPUT/errors.csv)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _csv_value(value) -> str:
    if value is None:
        return ""
    return str(int(value)) if isinstance(value, bool) else f"{float(value):.6g}"


def run(args: argparse.Namespace) -> int:
    import math
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm
    from transformers import pipeline

    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.commands._deploy_io import (
        BatchErrors, exported_runner, gather_images, output_names, output_path, resolve_device, score_in_chunks, write_csv,
    )
    from adpretrain_hf.modeling.image_io_adpretrain import read_image
    from adpretrain_hf.modeling.tasks_adpretrain import ANOMALY_DETECTION_TASK
    from adpretrain_hf.overlays import add_caption, decision_lines, render_overlay

    root, images = gather_images(args.images)
    names = output_names(images, root)
    exported = exported_runner(args.detector, args.runtime, args.device)
    device = "cpu" if exported is not None else resolve_device(args.device)
    detect = pipeline(ANOMALY_DETECTION_TASK, model=args.detector, device=device, exported=exported)
    if args.save_masks and detect.model.config.pixel_threshold is None:
        raise CommandError("--save-masks: this detector has no pixel threshold (fitted without --val)",
                           "fit it again with --val FOLDER, or drop --save-masks")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    call = {"return_tensors": "np"} if args.threshold is None else {"return_tensors": "np", "threshold": args.threshold}
    # overlays share one colour scale, known only after the last map: keep maps on disk till then
    scratch = None if args.no_overlays else tempfile.TemporaryDirectory(prefix="adpretrain-maps-")
    maps_dir = out / "maps" if args.save_maps else (Path(scratch.name) / "maps" if scratch is not None else None)
    low, high = math.inf, -math.inf
    rows, errors, flagged = [], BatchErrors(), 0
    decisions = {}
    try:
        bar = tqdm(total=len(images), desc="predict", unit="img", disable=args.no_progress)
        for path, result in score_in_chunks(detect, images, args.batch_size, errors, bar, **call):
            rows.append([str(path), *(_csv_value(result[k]) for k in CSV_COLUMNS[1:])])
            flagged += bool(result["label"])
            amap = np.asarray(result["anomaly_map"], dtype=np.float32)
            low, high = min(low, float(amap.min())), max(high, float(amap.max()))
            mask = result["pred_mask"]
            decisions[path] = decision_lines(result["score"], result["label"], result["image_threshold"], result["pixel_threshold"],
                                             float(amap.max()), None if mask is None else int(np.count_nonzero(mask)))
            if maps_dir is not None:
                np.save(output_path(maps_dir, names[path], ".npy"), amap)
            if args.save_masks:
                Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(output_path(out / "masks", names[path], ".png"))
        bar.close()
        if not rows:
            errors.report(out, 0)
            raise CommandError(f"none of the {len(images)} images could be read", "see the warnings above and errors.csv")
        write_csv(out / CSV_NAME, CSV_COLUMNS, rows)
        if not args.no_overlays:
            pixel_threshold = detect.model.config.pixel_threshold  # --threshold sets the image threshold only
            for path in tqdm(list(decisions), desc="overlays", unit="img", disable=args.no_progress):
                amap = np.load(output_path(maps_dir, names[path], ".npy"))
                mask = amap >= pixel_threshold if pixel_threshold is not None else None
                overlay = render_overlay(read_image(path), amap, vmin=low, vmax=high, pred_mask=mask)
                add_caption(overlay, decisions[path]).save(output_path(out / "overlays", names[path], ".png"),
                                                           compress_level=PNG_COMPRESS_LEVEL)
    finally:
        if scratch is not None:
            scratch.cleanup()
    calibrated = args.threshold is not None or detect.model.config.image_threshold is not None
    verdict = f"{flagged} flagged anomalous" if calibrated else "detector not calibrated: no labels"
    where = device if exported is None else f"{device} ({args.runtime})"
    print(f"{len(rows)} images scored on {where} ({verdict}): {out / CSV_NAME}"
          + ("" if args.no_overlays else f", overlays in {out / 'overlays'}") + (f", maps in {maps_dir}" if args.save_maps else "")
          + (f", masks in {out / 'masks'}" if args.save_masks else ""))
    errors.report(out, len(rows))
    return errors.exit_code(args.strict)
