"""Subcommands whose parser is built only when that subcommand runs.

Why: ``adpretrain --help`` builds every subcommand's parser and must stay free of torch and
transformers, but ``adpretrain evaluate`` / ``adpretrain pretrain`` derive their flags from
settings dataclasses with ``transformers.HfArgumentParser``. The subparser that ``cli.py``
makes is therefore a stub: its parsing is handed to the real parser, built on first use.
"""

from __future__ import annotations

import argparse
from typing import Callable, Optional, Sequence


def defer_parsing(stub: argparse.ArgumentParser, build: Callable[[str], argparse.ArgumentParser]) -> None:
    """Make ``stub`` parse with ``build(stub.prog)``; the stub's own defaults (the CLI's ``func``) carry over."""

    def parse_known_args(args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None):
        parser = build(stub.prog)
        defaults, _ = argparse.ArgumentParser.parse_known_args(stub, [])  # what cli.py set_defaults() on the stub
        parser.set_defaults(**vars(defaults))
        return parser.parse_known_args(args, namespace)

    # argparse's subparsers action calls the chosen subparser's parse_known_args (Python 3.9 to 3.13).
    stub.parse_known_args = parse_known_args  # type: ignore[method-assign]
