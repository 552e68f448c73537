"""``adpretrain pretrain``: ``training/pretrain.py`` under the ``adpretrain`` command (same flags, same parser)."""

from __future__ import annotations

import argparse

from ._deferred import defer_parsing

HELP = "pretrain the Feature Projectors on a Real-IAD-layout folder (same flags as training/pretrain.py)"


def _build(prog: str) -> argparse.ArgumentParser:
    from adpretrain_hf.training.pretrain import build_parser

    return build_parser(prog, debug_flag=False)  # --debug is the adpretrain command's own flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defer_parsing(parser, _build)  # the flags come from PretrainArguments, imported only when pretraining


def run(args: argparse.Namespace) -> int:
    from adpretrain_hf.training import pretrain

    return pretrain.run_parsed(args, prog="adpretrain pretrain")
