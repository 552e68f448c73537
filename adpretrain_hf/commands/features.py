"""``adpretrain features``: run the anomaly-features pipeline over a folder of images.

Writes ``scores.csv`` (one image score per file), ``maps/<name>.png`` (anomaly map at the
image's own size, min-max scaled over the folder so maps are comparable) and, with
``--save-features``, ``features/<name>.npz`` (``block_<n>``: ``[h, w, D]`` per tapped backbone block).
"""

from __future__ import annotations

import argparse

HELP = "extract ADPretrain features / anomaly maps / scores for a folder of images (the pipeline, from the shell)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    parser.add_argument("--images", required=True, help="folder of images to score")
    parser.add_argument("--references", required=True, help="folder of normal reference images (the first --shots are used)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--shots", type=int, default=8, help="number of reference images (default 8)")
    parser.add_argument("--save-features", action="store_true", help="also write per-layer features as .npz")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="e.g. cuda:0 (default: cpu)")


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

    images = _images_in(args.images, "images")
    references = _images_in(args.references, "references")[: args.shots]
    out = Path(args.output)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    # References are read, processed and turned into a bank once for the whole folder.
    extract = pipeline("anomaly-features", model=args.model, device=args.device or "cpu", references=[str(p) for p in references])
    outputs = ["anomaly_map", "score"] + (["features"] if args.save_features else [])
    results = []
    for start in tqdm(range(0, len(images), args.batch_size), desc="features"):
        chunk = images[start : start + args.batch_size]
        batch = extract([str(p) for p in chunk], output=outputs, return_tensors="np")
        results.extend(zip(chunk, batch if isinstance(batch, list) else [batch]))
    maps = [np.asarray(r["anomaly_map"], dtype=np.float32) for _, r in results]
    low, high = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "score"])
        for (path, result), amap in zip(results, maps):
            writer.writerow([path.name, f"{float(result['score']):.6f}"])
            scaled = (amap - low) / max(high - low, 1e-12)
            Image.fromarray((scaled * 255).astype(np.uint8)).save(out / "maps" / f"{path.stem}.png")
            if args.save_features:
                (out / "features").mkdir(exist_ok=True)
                np.savez(out / "features" / f"{path.stem}.npz", **{f"block_{block}": np.asarray(f) for block, f in result["features"].items()})
    print(f"{len(results)} images scored: {out / 'scores.csv'}, maps in {out / 'maps'}")
    return 0
