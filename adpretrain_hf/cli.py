"""The ``adpretrain`` console script.

Each subcommand lives in ``adpretrain_hf/commands/<name>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int`` (optionally
``FORMATTER``, its help formatter). Plain argparse subcommands: modules import torch and
transformers only inside ``run``, and so do the checks of their arguments, so ``--help`` and
every argument error answer at once (tests/test_cli.py checks that neither is imported).
Subcommand parsers are :class:`~adpretrain_hf.settings_parser.SettingsParser` s, so a command
can add a settings dataclass's fields as flags (``evaluate``, ``pretrain``). Errors print one
readable line plus a hint and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from adpretrain_hf.settings_parser import SettingsParser

# name -> module under adpretrain_hf.commands (a registry, not an if/else chain)
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "pretrain": "pretrain",
    "evaluate": "evaluate",
    "features": "features",
    "synth": "synth",
    "card": "card",
    "convert": "convert",
    "fit": "fit",
    "predict": "predict",
    "export": "export",
    "app": "app",
}


class CommandError(Exception):
    """A user-facing failure: ``message`` says what is wrong, ``hint`` how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adpretrain",
        description="Anomaly representation pretraining (ADPretrain): pretrain, extract features, evaluate.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=SettingsParser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"adpretrain_hf.commands.{module_name}")  # light: heavy imports wait in run
        formatter = getattr(module, "FORMATTER", argparse.HelpFormatter)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=formatter)
        module.add_arguments(cmd)
        cmd.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("adpretrain: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's one place to turn errors into a line
        if args.debug:
            raise
        hint = getattr(err, "hint", "") or "run again with --debug for the full traceback"
        print(f"adpretrain {args.command}: error: {err}\n  hint: {hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
