"""``adpretrain features``: run the anomaly-features pipeline over a folder of images.

Writes ``scores.csv`` (one image score per file), ``maps/<file>.png`` (anomaly map at the
image's own size, min-max scaled over the folder so maps are comparable) and, with
``--save-features``, ``features/<file>.npz`` (``block_<n>``: ``[h, w, D]`` per tapped backbone block).
``<file>`` is the image's file name *with* its extension (``a.png`` -> ``maps/a.png.png``), so
``a.png`` and ``a.jpg`` never overwrite each other. Bad options exit 2 with one line naming them.
"""

from __future__ import annotations

import argparse
import os

from adpretrain_hf.commands._deploy_io import IMAGE_SUFFIXES, resolve_device

HELP = "extract ADPretrain features / anomaly maps / scores for a folder of images (the pipeline, from the shell)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=_model_source, help="checkpoint folder or Hub id")
    parser.add_argument("--images", required=True, type=_existing_folder, help="folder of images to score")
    parser.add_argument("--references", required=True, type=_existing_folder, help="folder of normal reference images (the first --shots are used)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--shots", type=_positive_int, default=8, help="number of reference images (default 8)")
    parser.add_argument("--save-features", action="store_true", help="also write per-layer features as .npz")
    parser.add_argument("--batch-size", type=_positive_int, default=8, help="images per model call (default 8)")
    parser.add_argument("--device", type=resolve_device, default="auto", help="auto (default: the GPU when there is one), cpu, cuda, cuda:N")


def _existing_folder(value: str) -> str:
    """argparse type: a folder that exists."""
    if not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"folder {value} does not exist: pass an existing folder of images")
    return value


def _positive_int(value: str) -> int:
    """argparse type: an integer >= 1 (argparse then exits 2 with this message)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer: pass a whole number >= 1") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is not allowed: pass a whole number >= 1")
    return number


def _model_source(value: str) -> str:
    """argparse type: an existing folder, or something that can only be a Hub id (``org/name``)."""
    if os.path.isdir(value):
        return value
    if os.path.exists(value):
        raise argparse.ArgumentTypeError(f"{value} is a file: pass the checkpoint folder that holds config.json")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        looks_local = True
    else:
        looks_local = value.startswith((".", "~", os.sep)) or value.count("/") > 1
    if looks_local:
        raise argparse.ArgumentTypeError(f"model folder {value} does not exist: pass a save_pretrained folder or a Hub id (org/name)")
    return value


def _images_in(folder, what: str):
    from pathlib import Path

    from adpretrain_hf.cli import CommandError

    path = Path(folder)
    if not path.is_dir():
        raise CommandError(f"{what} folder {folder} does not exist", f"pass an existing folder of images to --{what}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CommandError(f"no images in {folder}", f"put {', '.join(IMAGE_SUFFIXES)} files there")
    return files


def run(args: argparse.Namespace) -> int:
    import csv
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm
    from transformers import pipeline

    import adpretrain_hf  # noqa: F401  (registers the task)
    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.modeling.tasks_adpretrain import ANOMALY_FEATURES_TASK

    images = _images_in(args.images, "images")
    references = _images_in(args.references, "references")[: args.shots]
    out = Path(args.output)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    try:  # references are read, processed and turned into a bank once for the whole folder
        extract = pipeline(ANOMALY_FEATURES_TASK, model=args.model, device=args.device, references=[str(p) for p in references])
    except OSError as err:  # a Hub id that is neither cached nor reachable
        raise CommandError(f"could not load --model {args.model}: {err}", "pass a local save_pretrained folder or a cached Hub id") from err
    outputs = ["anomaly_map", "score"] + (["features"] if args.save_features else [])
    results = []
    for start in tqdm(range(0, len(images), args.batch_size), desc="features", unit="batch"):
        chunk = images[start : start + args.batch_size]  # one model call per chunk (batch_size images)
        batch = extract([str(p) for p in chunk], output=outputs, return_tensors="np", batch_size=args.batch_size)
        results.extend(zip(chunk, batch if isinstance(batch, list) else [batch]))
    maps = [np.asarray(r["anomaly_map"], dtype=np.float32) for _, r in results]
    low, high = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "score"])
        for (path, result), amap in zip(results, maps):
            name = path.relative_to(args.images).as_posix()  # with its extension: a.png and a.jpg stay apart
            writer.writerow([name, f"{float(result['score']):.6f}"])
            scaled = (amap - low) / max(high - low, 1e-12)
            Image.fromarray((scaled * 255).astype(np.uint8)).save(out / "maps" / f"{name}.png")
            if args.save_features:
                (out / "features").mkdir(exist_ok=True)
                np.savez(out / "features" / f"{name}.npz", **{f"block_{block}": np.asarray(f) for block, f in result["features"].items()})
    print(f"{len(results)} images scored: {out / 'scores.csv'}, maps in {out / 'maps'}")
    return 0
