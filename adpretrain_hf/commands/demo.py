"""``adpretrain demo``: pretrain on synthetic categories, evaluate on held-out ones, print the table."""

from __future__ import annotations

import argparse

HELP = "run the paper's story offline: synthetic data, pretraining, w/o vs w/ evaluation on held-out categories"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="adpretrain-demo", help="folder for data, checkpoint, results.json and plots (default: ./adpretrain-demo)")
    parser.add_argument("--backbone", default=None, help="preset name (default: efficientnet-lite0 with real ImageNet weights if installed, else tiny-clip)")
    parser.add_argument("--quick", action="store_true", help="sub-minute smoke run (tiny random backbone, tiny data)")
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps")
    parser.add_argument("--image-size", type=int, default=None, help="model input size (default: the demo's choice for the preset)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from adpretrain_hf.demo import DemoSettings, run_demo

    overrides = {k: v for k, v in {"steps": args.steps, "image_size": args.image_size, "seed": args.seed}.items() if v is not None}
    if args.backbone:
        overrides["backbone"] = args.backbone
    settings = DemoSettings.quick(**overrides) if args.quick else DemoSettings(**overrides)
    run_demo(args.output, settings)
    return 0
