"""benchmarks/bootstrap_metrics.py runs end to end on a tiny cell: the old module loads from git, every stage is
timed, and old and new agree (pair counts equal, metrics within float rounding) -- on continuous and tied maps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.script_loader import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bootstrap_metrics.py"
STAGES = ("pair_counts (pixel AUROC)", "WeightedPRO setup", "WeightedPRO call (AUPRO)", "ResampledMetrics (setup + call)")


def _load(monkeypatch):
    return load_benchmark(SCRIPT, monkeypatch)


@pytest.mark.parametrize("levels", ["0", "6"])
def test_tiny_cell_table_old_equals_new(levels, monkeypatch, capsys):
    module = _load(monkeypatch)
    known = subprocess.run(["git", "cat-file", "-e", f"{module.BASELINE}^{{commit}}"], cwd=SCRIPT.parents[1],
                           capture_output=True)
    if known.returncode != 0:
        pytest.skip("the baseline revision is not in this checkout's git history")
    monkeypatch.setattr(sys, "argv", ["bootstrap_metrics.py", "--images", "14", "--size", "10", "--resamples", "6",
                                      "--levels", levels, "--memory"])
    module.main()
    rows = {cells[0]: cells[1:] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]] if cells[0] in STAGES}
    assert set(rows) == set(STAGES)
    assert rows[STAGES[0]][3] == "0.0e+00"  # integer pair counts: identical
    assert rows[STAGES[1]][3] == "-"
    for stage in STAGES[2:]:
        assert float(rows[stage][3]) < 1e-12
    assert all(float(rows[stage][i]) >= 0 for stage in STAGES for i in (0, 1))  # seconds


def test_synthetic_cell_has_both_classes_and_defects(monkeypatch):
    maps, scores, labels, masks = _load(monkeypatch).make_cell(20, 16, 0.8, 0, seed=3)
    assert maps.shape == masks.shape == (20, 16, 16) and maps.dtype.name == "float32"
    assert set(labels.tolist()) == {0, 1}
    assert (masks.reshape(20, -1).any(axis=1) == labels.astype(bool)).all()  # defects exactly on anomalous images
    assert (scores == maps.reshape(20, -1).max(axis=1)).all()
