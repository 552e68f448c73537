"""``adpretrain pretrain``: ``training/pretrain.py`` under the ``adpretrain`` command (same flags, same parser)."""

from __future__ import annotations

import argparse

from adpretrain_hf.training import pretrain as _script  # light: argparse only; training imports wait in run

HELP = "pretrain the Feature Projectors on a Real-IAD-layout folder (same flags as training/pretrain.py)"
FORMATTER = _script._HelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _script.add_arguments(parser, debug_flag=False)  # --debug is the adpretrain command's own flag


def run(args: argparse.Namespace) -> int:
    return _script.run_parsed(args, prog="adpretrain pretrain")
