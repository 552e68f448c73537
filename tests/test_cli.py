"""The `adpretrain` CLI: every subcommand's help, one-line errors, and --help without torch.

The subcommands' own tests are in tests/commands/test_<command>.py; the quick demo in tests/test_demo.py."""

import json
import subprocess
import sys

import pytest

from adpretrain_hf.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: adpretrain" in capsys.readouterr().out


def test_errors_are_one_line_with_a_hint(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "adpretrain_hf.cli", "card", "--checkpoint", str(tmp_path / "missing")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "error:" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr


LIGHT_CASES = [
    *([command, "--help"] for command in sorted(COMMANDS)),
    ["--help"],
    ["predict", "--detector", "no/such/dir/det", "--images", "no_such.png", "--output", "OUT"],
    ["predict", "--detector", "org/name", "--images", "no_such_folder", "--output", "OUT"],
    ["fit", "--model", "./no_such_ckpt", "--method", "patchcore", "--train", "no_such", "--output", "OUT"],
    ["fit", "--model", "org/name", "--method", "patchcore", "--train", "*.nothing", "--output", "OUT", "--margin", "nan"],
    ["features", "--model", "org/name", "--images", "x", "--references", "y", "--output", "OUT", "--device", "gpu7"],
    ["evaluate", "--data", "x"],
    ["evaluate", "--preset", "tiny-clip", "--data", "no_such_dataset"],
    ["pretrain", "--epochs", "many"],
]
"""``--help`` of every subcommand and argument errors of several kinds: each must answer without
importing torch or transformers (that is what makes them instant; benchmarks/cli_latency.py times them)."""


def test_help_and_argument_errors_import_neither_torch_nor_transformers(tmp_path):
    probe = (
        "import json, runpy, sys\n"
        "report = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    sys.argv = ['adpretrain', *args]\n"
        "    try:\n"
        "        runpy.run_module('adpretrain_hf.cli', run_name='__main__', alter_sys=True)\n"
        "        code = 0\n"
        "    except SystemExit as exit:\n"
        "        code = exit.code\n"
        "    report.append([args, code, sorted(m for m in ('torch', 'transformers') if m in sys.modules)])\n"
        "print('REPORT', json.dumps(report))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe, json.dumps(LIGHT_CASES)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    assert len(report) == len(LIGHT_CASES)
    for args, code, heavy in report:
        assert heavy == [], f"`adpretrain {' '.join(args)}` imported {heavy}"
        assert code == (0 if "--help" in args else 2 if args[0] != "evaluate" or "--preset" not in args else 1), (args, code)
    errors = [line for line in result.stderr.splitlines() if ": error:" in line]
    assert len(errors) == len(LIGHT_CASES) - len(COMMANDS) - 1  # one error line per bad command line
    assert not (tmp_path / "OUT").exists()  # nothing written for a command that failed its arguments
    assert "Traceback" not in result.stderr and "Repo id" not in result.stderr
