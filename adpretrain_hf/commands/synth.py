"""``adpretrain synth``: write a synthetic anomaly-detection dataset with pixel masks."""

from __future__ import annotations

import argparse

HELP = "write a synthetic dataset (Real-IAD or MVTec AD layout) with defect masks, offline"

# Defaults mirror adpretrain_hf.data.synthetic; repeated here so --help needs no imports.
_LAYOUTS = ("realiad", "mvtec")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", choices=_LAYOUTS, default="realiad", help="folder layout to write (default: realiad)")
    parser.add_argument("--out", required=True, metavar="DIR", help="destination folder")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes byte-identical files (default: 0)")
    parser.add_argument(
        "--categories", default=None, metavar="A,B",
        help="comma-separated names: fabric, wood, tile, bottle, screw, washer (default: all)",
    )
    parser.add_argument("--num-normal", type=int, default=8, help="normal samples per category (default: 8)")
    parser.add_argument("--num-anomalous", type=int, default=4, help="anomalous samples per category (default: 4)")
    parser.add_argument("--num-test-normal", type=int, default=None,
                        help="mvtec layout: normal test images per category (default: --num-anomalous)")
    parser.add_argument("--image-size", type=int, default=128, help="square image side in pixels (default: 128)")
    parser.add_argument("--num-views", type=int, default=2, help="realiad layout: camera views per sample, 1-5 (default: 2)")
    parser.add_argument("--unaligned", action="store_true", help="free object position and rotation (default: aligned)")
    parser.add_argument("--overwrite", action="store_true", help="replace category folders that already hold files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.data.synthetic import SYNTHETIC_CATEGORIES, generate_dataset

    categories = None
    if args.categories:
        categories = [name.strip() for name in args.categories.split(",") if name.strip()]
        unknown = [name for name in categories if name not in SYNTHETIC_CATEGORIES]
        if unknown or not categories:
            raise CommandError(
                f"unknown synthetic categories {unknown or [args.categories]}",
                f"choose from {', '.join(SYNTHETIC_CATEGORIES)}, comma-separated",
            )
    try:
        result = generate_dataset(
            args.out,
            layout=args.layout,
            categories=categories,
            num_normal=args.num_normal,
            num_anomalous=args.num_anomalous,
            image_size=args.image_size,
            seed=args.seed,
            aligned=not args.unaligned,
            num_views=args.num_views,
            num_test_normal=args.num_test_normal,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except ValueError as err:
        raise CommandError(str(err), "check the option values; see adpretrain synth --help") from err
    print(
        f"wrote {result.num_images} images and {result.num_masks} masks ({result.layout} layout, "
        f"categories {', '.join(result.categories)}) to {result.root}"
    )
    return 0
