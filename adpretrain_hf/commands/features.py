"""``adpretrain features``: run the anomaly-features pipeline over images.

``--images`` / ``--references`` take image files, folders (searched recursively) and quoted
globs, as every command does. Writes into ``--output``:

- ``scores.csv``: ``path, score`` per image;
- ``maps/<sub>/<stem>_<ext>.png``: the anomaly map at the image's own size, min-max scaled over
  the run so maps compare (names as ``adpretrain predict``'s: they never clash);
- with ``--save-features``: ``features/<sub>/<stem>_<ext>.npz`` (``block_<n>``: ``[h, w, D]`` per
  tapped backbone block);
- ``errors.csv`` when an image could not be read (skipped with a warning; ``--strict``: exit 1).

Bad options exit 2 with one line naming them, before any model loads.
"""

from __future__ import annotations

import argparse

from adpretrain_hf.commands._deploy_io import device_name, image_input, model_source, positive_int

HELP = "extract ADPretrain features / anomaly maps / scores for images (the pipeline, from the shell)"
IMAGES_HELP = "image files, folders (searched recursively) or quoted globs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=model_source, help="checkpoint folder or Hub id org/name")
    parser.add_argument("--images", required=True, nargs="+", type=image_input, metavar="IMAGES", help=f"images to score: {IMAGES_HELP}")
    parser.add_argument("--references", required=True, nargs="+", type=image_input, metavar="IMAGES",
                        help=f"normal reference images (the first --shots are used): {IMAGES_HELP}")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--shots", type=positive_int, default=8, help="number of reference images (default 8)")
    parser.add_argument("--save-features", action="store_true", help="also write per-layer features as .npz")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per model call (default 8)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto (default: the GPU when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--strict", action="store_true", help="exit 1 when an image could not be read (default: skip it, warn, list it in OUTPUT/errors.csv)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")



def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm
    from transformers import pipeline

    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.commands._deploy_io import (
        BatchErrors, gather_images, output_names, output_path, readable, resolve_device, score_in_chunks, write_csv,
    )
    from adpretrain_hf.modeling.tasks_adpretrain import ANOMALY_FEATURES_TASK

    root, images = gather_images(args.images)
    errors = BatchErrors()
    references = readable(gather_images(args.references)[1], errors, "references", progress=False)[: args.shots]
    device = resolve_device(args.device)
    try:  # references are read, processed and turned into a bank once for the whole run
        extract = pipeline(ANOMALY_FEATURES_TASK, model=args.model, device=device, references=[str(p) for p in references])
    except OSError as err:  # a Hub id that is neither cached nor reachable
        raise CommandError(f"could not load --model {args.model}: {err}", "pass a local save_pretrained folder or a cached Hub id") from None
    outputs = ["anomaly_map", "score"] + (["features"] if args.save_features else [])
    names = output_names(images, root)
    out = Path(args.output)
    results = []
    bar = tqdm(total=len(images), desc="features", unit="img", disable=args.no_progress)
    for path, result in score_in_chunks(extract, images, args.batch_size, errors, bar, output=outputs, return_tensors="np"):
        results.append((path, result))
        if args.save_features:
            arrays = {f"block_{block}": np.asarray(f) for block, f in result["features"].items()}
            np.savez(output_path(out / "features", names[path], ".npz"), **arrays)
    bar.close()
    if not results:
        errors.report(out, 0)
        raise CommandError(f"none of the {len(images)} images could be read", "see the warnings above and errors.csv")
    maps = [np.asarray(r["anomaly_map"], dtype=np.float32) for _, r in results]
    low, high = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    for (path, _), amap in zip(results, maps):
        Image.fromarray(((amap - low) / max(high - low, 1e-12) * 255).astype(np.uint8)).save(output_path(out / "maps", names[path], ".png"))
    write_csv(out / "scores.csv", ["path", "score"], ([str(path), f"{float(result['score']):.6f}"] for path, result in results))
    errors.report(out, len(results))
    print(f"{len(results)} images scored: {out / 'scores.csv'}, maps in {out / 'maps'}")
    return errors.exit_code(args.strict)
