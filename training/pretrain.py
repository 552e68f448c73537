"""Pretrain ADPretrain Feature Projectors on a Real-IAD-layout dataset.

    python training/pretrain.py --config training/configs/clip-large.yaml --data-root /data/Real-IAD
    accelerate launch training/pretrain.py --config training/configs/clip-large.yaml --data-root /data/Real-IAD
    accelerate launch --multi_gpu --num_processes 8 training/pretrain.py --config ... --data-root ...

Every ``PretrainArguments`` field is a flag (``--learning-rate 2e-3``); ``--config`` reads
them from YAML, and flags typed on the command line override the file. ``--set key=value``
sets any argument too, and ``--set model.loss_weight=2`` an ADPretrainConfig field (the name
is checked and the value read with the field's type). The trained model is
``<output_dir>/model``, a ``save_pretrained`` checkpoint (with a model card) that ``AutoModel.from_pretrained`` and
``pipeline("anomaly-features")`` load; training state lives in ``<output_dir>/checkpoints``
(``--resume latest``; safetensors + JSON, no pickle), tracker logs in ``<output_dir>/logs``,
per-step numbers in ``<output_dir>/metrics.jsonl``. Errors in the arguments print one line
and exit with status 2 (``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Optional, Sequence

EXIT_USAGE = 2  # argparse's status for bad arguments; used for every user error
EXIT_INTERRUPTED = 130
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)

CONFIG_HELP = "YAML file of pretraining arguments (training/configs/<preset>.yaml); flags typed here override it"
SET_HELP = ("override any argument, value read with the field's type: --set learning_rate=2e-3, "
            "--set model.<ADPretrainConfig field>=value (e.g. model.layers=[6,12])")


def build_parser(prog: str = "pretrain.py", debug_flag: bool = True) -> argparse.ArgumentParser:
    """Every :class:`PretrainArguments` field as a flag, ``--config``, ``--set`` (see :func:`add_arguments`)."""
    from adpretrain_hf.settings_parser import SettingsParser

    parser = SettingsParser(prog=prog, description=__doc__, formatter_class=_HelpFormatter)
    add_arguments(parser, debug_flag)
    return parser


def add_arguments(parser: argparse.ArgumentParser, debug_flag: bool = True) -> None:
    """Add the flags to a :class:`~adpretrain_hf.settings_parser.SettingsParser` (``adpretrain pretrain`` uses this too)."""
    from adpretrain_hf.training.arguments import PretrainArguments

    parser.add_settings(PretrainArguments, config_help=CONFIG_HELP)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    if debug_flag:  # `adpretrain pretrain` has its own top-level --debug
        parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default."""


def main(argv: Optional[Sequence[str]] = None, prog: str = "pretrain.py") -> int:
    """Parse, train, and turn user errors into one line on stderr with exit status 2."""
    return run_parsed(build_parser(prog).parse_args(argv), prog)


def run_parsed(parsed: argparse.Namespace, prog: str = "pretrain.py") -> int:
    """Train from parsed flags (``adpretrain pretrain`` parses with the same parser)."""
    try:
        _train(parsed)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as err:
        if getattr(parsed, "debug", False):
            raise
        print(f"{prog}: error: {err} (--debug for the traceback)", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _train(parsed: argparse.Namespace) -> None:
    from adpretrain_hf.training.arguments import PretrainArguments, apply_overrides

    values = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(PretrainArguments)}
    args = PretrainArguments(**apply_overrides(values, parsed.set)).validate()  # before the heavy imports

    from adpretrain_hf.training.loop import run_pretraining

    run_pretraining(args)  # prints "checkpoint written: <output_dir>/model" on the main process


if __name__ == "__main__":
    sys.exit(main())
