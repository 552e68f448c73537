"""`adpretrain pretrain`: the training script's own parser, built only when the command runs, and its result.

The reference is ``training/pretrain.py``'s ``build_parser`` parsing the same flags directly; the
training itself is replaced by a recorder (pretraining is tested in tests/training/test_pretrain.py).
"""

import argparse

import pytest

from adpretrain_hf.cli import main
from adpretrain_hf.training import pretrain as pretrain_script

FLAGS = ["--data-root", "some/folder", "--epochs", "3", "--batch-size", "5", "--set", "model.feature_dim=16"]
RETURN_CODE = 7  # what the fake trainer returns: the command must hand it back unchanged


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    monkeypatch.setattr(pretrain_script, "run_parsed", lambda parsed, prog: calls.append((parsed, prog)) or RETURN_CODE)
    return calls


def test_flags_parse_as_the_training_script_parses_them(recorded):
    assert main(["pretrain", *FLAGS]) == RETURN_CODE
    ((parsed, prog),) = recorded
    assert prog == "adpretrain pretrain"
    expected = vars(pretrain_script.build_parser("x", debug_flag=False).parse_args(FLAGS))
    got = vars(parsed)
    assert {key: got[key] for key in expected} == expected
    assert got["debug"] is False and got["command"] == "pretrain"  # the adpretrain command's own flags
    assert (got["epochs"], got["batch_size"], got["set"]) == (3, 5, ["model.feature_dim=16"])


def test_debug_belongs_to_the_adpretrain_command(recorded):
    assert main(["--debug", "pretrain", *FLAGS]) == RETURN_CODE
    assert recorded[0][0].debug is True
    with pytest.raises(SystemExit) as info:  # not a pretrain flag here: the top-level one is used instead
        main(["pretrain", "--debug", *FLAGS])
    assert info.value.code == 2


def test_an_unknown_flag_is_a_usage_error(recorded, capsys):
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--epochz", "3"])
    assert info.value.code == 2 and not recorded
    assert "--epochz" in capsys.readouterr().err


def test_the_command_has_the_scripts_flags():
    """``adpretrain pretrain`` and ``training/pretrain.py`` add the same flags (one add_arguments), less the script's --debug."""
    from adpretrain_hf.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["pretrain"]
    script = pretrain_script.build_parser()
    flags = lambda parser: {o for a in parser._actions for o in a.option_strings}  # noqa: E731
    assert flags(script) - flags(sub) == {"--debug"} and flags(sub) <= flags(script)

