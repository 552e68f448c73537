"""A benchmarks/ script loaded as a module inside a test (scripts import each other, e.g. the one
timer in latency.py, so their folder goes on ``sys.path`` for the test's duration)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(script: str | Path, monkeypatch) -> ModuleType:
    """``benchmarks/<script>`` (a name or a path) run at module level only: ``main()`` is not called."""
    path = BENCHMARKS / script if isinstance(script, str) else script
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
