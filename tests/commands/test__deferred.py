"""adpretrain_hf.commands._deferred: a stub subparser that parses with a parser built on first use.

The reference is the built parser parsing the same arguments on its own.
"""

import argparse

import pytest

from adpretrain_hf.commands._deferred import defer_parsing


def _real_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--name", required=True)
    return parser


def _cli(built: list) -> argparse.ArgumentParser:
    """A two-level parser like cli.py's: one deferred subcommand with a ``func`` default on its stub."""
    parser = argparse.ArgumentParser(prog="tool")
    sub = parser.add_subparsers(dest="command")
    stub = sub.add_parser("train")
    defer_parsing(stub, lambda prog: built.append(prog) or _real_parser(prog))
    stub.set_defaults(func="train-runner")
    return parser


def test_the_real_parser_parses_and_the_stub_defaults_carry_over():
    built = []
    parser = _cli(built)
    assert not built  # nothing is built while the CLI is assembled
    parsed = parser.parse_args(["train", "--name", "a", "--size", "9"])
    expected = vars(_real_parser("x").parse_args(["--name", "a", "--size", "9"]))
    assert vars(parsed) == {**expected, "command": "train", "func": "train-runner"}
    assert built == ["tool train"]  # built once, with the stub's prog (so usage lines name the command)


def test_the_real_parsers_defaults_and_errors_apply(capsys):
    parser = _cli([])
    assert parser.parse_args(["train", "--name", "b"]).size == 3
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["train"])
    assert info.value.code == 2
    assert "tool train" in capsys.readouterr().err  # the usage line of the built parser, under the stub's prog
