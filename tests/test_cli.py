"""The `adpretrain` CLI: every subcommand's help, one-line errors, and --help without torch.

The subcommands' own tests are in tests/commands/test_<command>.py; the quick demo in tests/test_demo.py."""

import subprocess
import sys
from pathlib import Path

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


def test_help_imports_no_torch():
    """The console script's --help parses every subcommand without torch or transformers."""
    script = Path(sys.executable).with_name("adpretrain")
    probe = (
        "import sys\nfrom adpretrain_hf.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules)\nprint('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY []" in result.stdout and "predict" in result.stdout
    if script.is_file():  # the real entry point, as a user runs it
        timed = subprocess.run([sys.executable, "-X", "importtime", str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert timed.returncode == 0
        imported = {line.rsplit("|", 1)[-1].strip() for line in timed.stderr.splitlines() if line.startswith("import time:")}
        assert "torch" not in imported and "transformers" not in imported
