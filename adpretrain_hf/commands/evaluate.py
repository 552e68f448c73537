"""``adpretrain evaluate``: the Table-1 runner from the shell (w/o vs w/ pretrained features).

Prints the markdown table on stdout; with ``--output DIR`` writes ``results.json``,
``results.csv``, ``results.md``, ``overlays/<category>/*.png`` and ``comparison.png``.
See ``docs/EVALUATION.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

from adpretrain_hf.commands._deploy_io import model_source
from adpretrain_hf.evaluation.config import EvaluationConfig  # light: the settings, no torch
from adpretrain_hf.settings_parser import SettingsParser, dataclass_from_namespace

HELP = "evaluate detectors with backbone (w/o) vs ADPretrain (w/) features, as in the paper's Table 1"
_MODEL_HINT = ("pass a checkpoint folder written by `adpretrain pretrain` / save_pretrained, a Hub id, "
               "or --preset NAME for a random-weight smoke run")
FORMATTER = argparse.ArgumentDefaultsHelpFormatter  # every setting's default in --help
CONFIG_HELP = "YAML or JSON file of EvaluationConfig settings (field: value); flags typed here override it"


def add_arguments(parser: SettingsParser) -> None:
    """Every :class:`EvaluationConfig` field as a flag, ``--config``, plus the model to evaluate."""
    parser.add_settings(EvaluationConfig, config_help=CONFIG_HELP)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="DIR_OR_ID", type=model_source, help="checkpoint folder or Hub id (org/name) of an ADPretrain model")
    source.add_argument("--preset", metavar="NAME", help="build a preset with random weights instead (smoke runs, e.g. tiny-clip)")


def build_parser(prog: str = "adpretrain evaluate") -> SettingsParser:
    """The ``adpretrain evaluate`` parser on its own (tests; the CLI adds the same flags to its subparser)."""
    parser = SettingsParser(prog=prog, description=HELP, formatter_class=FORMATTER)
    add_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace, argv: list[str] | None = None):
    """The :class:`EvaluationConfig` of parsed arguments; ``argv`` is recorded in ``extra``."""
    extra = dict(args.extra) if argv is None else {**args.extra, "argv": list(argv)}
    return dataclass_from_namespace(EvaluationConfig, args, extra=extra)


def _load_model(args: argparse.Namespace):
    import torch

    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.modeling import PRESETS, ADPretrainConfig, ADPretrainModel

    if args.preset is not None:
        if args.preset not in PRESETS:
            raise CommandError(f"unknown preset {args.preset!r}", f"choose one of {', '.join(sorted(PRESETS))}")
        torch.manual_seed(0)  # the same random weights on every smoke run
        return ADPretrainModel(ADPretrainConfig.from_preset(args.preset))
    try:
        return ADPretrainModel.from_pretrained(args.model)
    except (OSError, ValueError) as err:
        raise CommandError(f"could not load the model {args.model!r}: {err}", _MODEL_HINT) from err


def run(args: argparse.Namespace) -> int:
    from adpretrain_hf.cli import CommandError

    if not os.path.isdir(args.data_root):
        raise CommandError(f"data folder {args.data_root} does not exist",
                           "pass the folder that holds the categories, e.g. --data /data/mvtec_ad")
    try:
        config = config_from_args(args, sys.argv[1:]).validate()
    except (TypeError, ValueError) as err:
        raise CommandError(str(err), "fix the option named above (see `adpretrain evaluate --help`)") from err
    from adpretrain_hf.evaluation import run_evaluation

    model = _load_model(args)
    try:
        run_evaluation(model, config, model_name=args.model or f"preset:{args.preset} (random weights)")
    except ValueError as err:
        raise CommandError(str(err), "check --data, --layout and --categories against the dataset on disk") from err
    if config.output_dir:
        print(f"wrote {os.path.join(config.output_dir, 'results.json')}, results.csv, results.md, overlays/ and comparison.png")
    return 0
