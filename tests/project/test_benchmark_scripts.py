"""Every script in benchmarks/ imports (its module level runs) and builds its --help: a renamed or
moved package name breaks here, not on the day someone needs the benchmark."""

from __future__ import annotations

import sys

import pytest

from tests.benchmarks.script_loader import BENCHMARKS, load_benchmark

SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_benchmark_script_imports_and_has_help(script, monkeypatch, capsys):
    module = load_benchmark(script, monkeypatch)  # module level only: main() is not called
    if not hasattr(module, "main"):
        return  # a helper module other scripts import
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
