"""``adpretrain evaluate``: the Table-1 runner from the shell (w/o vs w/ pretrained features).

Prints the markdown table on stdout; with ``--output DIR`` writes ``results.json``,
``results.csv``, ``results.md``, ``overlays/<category>/*.png`` and ``comparison.png``.
See ``docs/EVALUATION.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "evaluate detectors with backbone (w/o) vs ADPretrain (w/) features, as in the paper's Table 1"

# Mirrors of adpretrain_hf.evaluation.config, repeated so that --help needs no heavy imports
# (tests/test_evaluation.py checks that they agree).
_LAYOUTS = ("auto", "mvtec", "mpdd", "mvtec3d", "btad", "visa", "realiad")
_STRATEGIES = ("first", "random", "kmeans", "aligned")
_DTYPES = ("float32", "bfloat16", "float16")
_DEFAULT_METHODS = "featurenorm,patchcore,padim"
_MODEL_HINT = ("pass a checkpoint folder written by `adpretrain pretrain` / save_pretrained, a Hub id, "
               "or --preset NAME for a random-weight smoke run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="DIR_OR_ID", help="checkpoint folder or Hub id of an ADPretrain model")
    source.add_argument("--preset", metavar="NAME", help="build a preset with random weights instead (smoke runs, e.g. tiny-clip)")
    parser.add_argument("--data", required=True, metavar="ROOT", help="dataset folder holding the categories")
    parser.add_argument("--layout", choices=_LAYOUTS, default="auto", help="dataset layout (default: auto-detect)")
    parser.add_argument("--categories", default=None, metavar="A,B", help="comma-separated categories (default: all)")
    parser.add_argument("--methods", default=_DEFAULT_METHODS, metavar="M1,M2",
                        help=f"comma-separated detectors: featurenorm, patchcore, padim, cflow, glass, uniad (default: {_DEFAULT_METHODS})")
    parser.add_argument("--shots", type=int, default=8, help="normal reference images per query (default: 8, the paper's)")
    parser.add_argument("--compare-backbone", action=argparse.BooleanOptionalAction, default=True,
                        help="also run every method on the backbone's own features, the w/o column (default: yes)")
    parser.add_argument("--feature-kinds", default=None, metavar="K1,K2",
                        help="feature kinds to evaluate: backbone (w/o), residual (no projector, Table 2), pretrained (w/); "
                             "default: backbone,pretrained (pretrained alone with --no-compare-backbone)")
    parser.add_argument("--output", default=None, metavar="DIR", help="write results.json/csv/md, overlays and comparison.png here")
    parser.add_argument("--reference-strategy", choices=_STRATEGIES, default="first",
                        help="how references are chosen from the normal training images (default: first)")
    parser.add_argument("--reference-seed", type=int, default=0, help="seed of the first reference set (default: 0)")
    parser.add_argument("--reference-seeds", type=int, default=1, metavar="N",
                        help="repeat with N reference sets and report mean ± std (Table 4: 3; 'first' becomes 'random')")
    parser.add_argument("--train-fraction", type=float, default=1.0, metavar="F",
                        help="share of normal training images used (Table 3a: 0.1; default: 1.0)")
    parser.add_argument("--noise-ratio", type=float, default=0.0, metavar="R",
                        help="add int(R x normal training images) anomalous test images to training, kept in test (Table 3b: 0.1)")
    parser.add_argument("--train-shots", type=int, default=None, metavar="N",
                        help="few-shot: exactly N normal training images (Table 5: 2 or 4)")
    parser.add_argument("--realiad-fit-fraction", type=float, default=0.5, help="Real-IAD: share of OK samples fitted on (default: 0.5)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the Real-IAD split and protocol draws (default: 0)")
    parser.add_argument("--quick", action="store_true", help="trained methods (cflow, glass, uniad) run a few epochs: smoke runs only")
    parser.add_argument("--device", default=None, help="e.g. cuda:0 (default: where the model is, the CPU)")
    parser.add_argument("--dtype", choices=_DTYPES, default=None, help="model precision, e.g. bfloat16 on a GPU (default: float32)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--num-overlays", type=int, default=4, help="overlay PNGs per category (default: 4)")
    parser.add_argument("--aligned-feature-net", default=None, metavar="PATH",
                        help="ResNet-18 state dict for --reference-strategy aligned (default: random init, warns)")
    parser.add_argument("--feature-cache-mb", type=float, default=4096.0, metavar="MB",
                        help="memory for cached features per category; past it they spill to disk (default: 4096; 0: all on disk)")
    parser.add_argument("--no-feature-cache", action="store_true",
                        help="run the backbone for every request instead of once per image (slower; for comparisons)")
    parser.add_argument("--feature-cache-dir", default=None, metavar="DIR", help="where spilled features go (default: the temp folder)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _load_model(args: argparse.Namespace):
    import torch

    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.modeling import PRESETS, ADPretrainConfig, ADPretrainModel

    if args.preset is not None:
        if args.preset not in PRESETS:
            raise CommandError(f"unknown preset {args.preset!r}", f"choose one of {', '.join(sorted(PRESETS))}")
        torch.manual_seed(0)  # the same random weights on every smoke run
        return ADPretrainModel(ADPretrainConfig.from_preset(args.preset))
    looks_local = os.path.isabs(args.model) or args.model.startswith(".") or args.model.count("/") > 1
    if looks_local and not os.path.isdir(args.model):
        raise CommandError(f"model folder {args.model} does not exist", _MODEL_HINT)
    try:
        return ADPretrainModel.from_pretrained(args.model)
    except (OSError, ValueError) as err:
        raise CommandError(f"could not load the model {args.model!r}: {err}", _MODEL_HINT) from err


def run(args: argparse.Namespace) -> int:
    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.detectors import DETECTORS
    from adpretrain_hf.evaluation import EvaluationConfig, run_evaluation

    if not os.path.isdir(args.data):
        raise CommandError(f"data folder {args.data} does not exist",
                           "pass the folder that holds the categories, e.g. --data /data/mvtec_ad")
    methods = [name.strip().lower() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in methods if name not in DETECTORS]
    if unknown or not methods:
        raise CommandError(f"unknown method(s) {unknown or [args.methods]}",
                           f"choose from {', '.join(sorted(DETECTORS))}, comma-separated")
    try:
        config = EvaluationConfig(
            data_root=args.data, layout=args.layout, categories=args.categories, methods=methods, shots=args.shots,
            compare_backbone=args.compare_backbone, output_dir=args.output, reference_strategy=args.reference_strategy,
            reference_seed=args.reference_seed, train_fraction=args.train_fraction, noise_ratio=args.noise_ratio,
            train_shots=args.train_shots, reference_seeds=args.reference_seeds, quick=args.quick,
            realiad_fit_fraction=args.realiad_fit_fraction, split_seed=args.split_seed, device=args.device,
            dtype=args.dtype, batch_size=args.batch_size, num_overlays=args.num_overlays, progress=not args.no_progress,
            aligned_feature_net=args.aligned_feature_net, kinds=args.feature_kinds, feature_cache=not args.no_feature_cache,
            feature_cache_mb=args.feature_cache_mb, feature_cache_dir=args.feature_cache_dir, extra={"argv": sys.argv[1:]},
        ).validate()
    except (TypeError, ValueError) as err:
        raise CommandError(str(err), "fix the option named above (see `adpretrain evaluate --help`)") from err
    model = _load_model(args)
    try:
        run_evaluation(model, config, model_name=args.model or f"preset:{args.preset} (random weights)")
    except ValueError as err:
        raise CommandError(str(err), "check --data, --layout and --categories against the dataset on disk") from err
    if args.output:
        print(f"wrote {os.path.join(args.output, 'results.json')}, results.csv, results.md, overlays/ and comparison.png")
    return 0
