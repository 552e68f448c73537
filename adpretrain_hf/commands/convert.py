"""``adpretrain convert``: turn the authors' released projector checkpoint into a Hub folder.

    adpretrain convert --release-checkpoint projectors.pth --preset clip-large out/clip-large

By default the folder holds the projectors + config; the backbone is loaded from the preset's
backbone id when the folder is loaded. ``--bundle-backbone`` stores the backbone too (its
weights from ``--backbone-weights``, or the preset's backbone id). Key layout and what was
verified: docs/CONVERTING_RELEASE.md.
"""

from __future__ import annotations

import argparse

HELP = "convert the authors' released projector checkpoint (.pth) into a save_pretrained folder"
DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="output folder (config.json + model.safetensors + code)")
    parser.add_argument("--release-checkpoint", required=True, metavar="PTH",
                        help="the release's projector checkpoint (main.py's {'projectors': ..., metrics} or a bare state dict); "
                             "read with torch.load(weights_only=True) and a numpy-scalar allow-list only")
    parser.add_argument("--preset", default="clip-large",
                        help="preset of the backbone it was trained on (default clip-large; tiny-release: width 64, "
                             "the shape of tests/fixtures/release_parity's checkpoint)")
    parser.add_argument("--bundle-backbone", action="store_true",
                        help="store the backbone's weights in the folder too (default: only projectors; the backbone "
                             "loads from the preset's backbone id)")
    parser.add_argument("--backbone-weights", default=None, metavar="ID_OR_DIR",
                        help="where the backbone's weights come from (default with --bundle-backbone: the preset's backbone id)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the saved weights (default float32)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty out_dir")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.convert_release import ReleaseCheckpointError, convert_release_checkpoint
    from adpretrain_hf.modeling import ADPretrainConfig

    out = Path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise CommandError(f"{out} exists and is not an empty folder", "choose a new out_dir or pass --overwrite")
    if not Path(args.release_checkpoint).is_file():
        raise CommandError(f"release checkpoint {args.release_checkpoint} does not exist", "pass the release's projector .pth file")
    try:
        config = ADPretrainConfig.from_preset(args.preset)
    except ValueError as err:
        raise CommandError(str(err), "pass one of the listed presets to --preset") from None
    backbone = args.backbone_weights or (config.backbone_id if args.bundle_backbone else None)
    if args.bundle_backbone and not backbone:
        raise CommandError(f"preset {args.preset!r} has no backbone id to bundle", "pass --backbone-weights ID_OR_DIR")
    try:
        model = convert_release_checkpoint(
            args.release_checkpoint, config, out_dir=out, dtype=getattr(torch, args.dtype),
            backbone_weights=backbone, bundle_backbone=args.bundle_backbone,
        )
    except ReleaseCheckpointError as err:
        raise CommandError(str(err), err.hint) from None
    except ValueError as err:
        raise CommandError(str(err), "see docs/CONVERTING_RELEASE.md") from None
    centers = " and centers" if bool(model.centers.initialized) else ""
    where = f"bundled (from {backbone})" if args.bundle_backbone else f"not bundled, loads from {model.config.backbone_id}"
    print(f"converted {len(model.projectors)} projectors{centers} from {args.release_checkpoint} to {out} (backbone {where})")
    return 0
