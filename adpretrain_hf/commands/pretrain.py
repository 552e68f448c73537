"""``adpretrain pretrain``: forwards to ``training/pretrain.py`` (same flags)."""

from __future__ import annotations

import argparse

HELP = "pretrain the Feature Projectors on a Real-IAD-layout folder (same flags as training/pretrain.py)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from adpretrain_hf.training.pretrain import build_parser

    for action in build_parser()._actions:
        if action.dest not in ("help", "debug"):  # --debug is the adpretrain command's own flag
            parser._add_action(action)


def run(args: argparse.Namespace) -> int:
    from adpretrain_hf.training import pretrain

    argv = []
    for action in pretrain.build_parser()._actions:
        value = getattr(args, action.dest, None)
        if action.dest == "help" or value in (None, False, []):
            continue
        flag = action.option_strings[0]
        if isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        elif value is True:
            argv.append(flag)
        else:
            argv += [flag, str(value)]
    return pretrain.main(argv)
