"""adpretrain_hf.evaluation.report: cells -> Table 1 (aggregation, markdown, CSV, JSON).

The reference aggregation is an explicit loop with numpy (mean, ddof=1 std) over hand-made cells;
the CSV and JSON are read back with the standard library.
"""

from __future__ import annotations

import csv
import itertools
import json
import math

import numpy as np
import pytest

from adpretrain_hf.evaluation.cell import CellResult
from adpretrain_hf.evaluation.config import METRICS
from adpretrain_hf.evaluation.report import aggregate, csv_rows, markdown_table, write_csv, write_json

CATEGORIES, METHODS, KINDS, SEEDS = ("tile", "wood"), ("patchcore",), ("backbone", "pretrained"), (0, 1, 2)


def _cells(seeds=SEEDS, missing=None) -> list[CellResult]:
    """Random metrics per (category, method, kind, seed); ``missing`` is set to None (a metric that had no data)."""
    rng = np.random.default_rng(0)
    cells = []
    for category, method, kind, seed in itertools.product(CATEGORIES, METHODS, KINDS, seeds):
        metrics = {m: float(rng.random()) for m in METRICS}
        if missing == (category, kind, seed):
            metrics["aupro"] = None
        cells.append(CellResult(category, method, kind, seed, metrics, 8, 4, 0.0, 0.0))
    rng.shuffle(cells)  # the order of the runs must not matter
    return cells


def _reference(cells, key) -> dict[str, float]:
    """Mean and ddof=1 std over seeds of ``key(cell)`` per metric, skipping Nones, by loops."""
    out = {}
    for metric in METRICS:
        per_seed = {}
        for cell in cells:
            if key(cell) and cell.metrics[metric] is not None:
                per_seed.setdefault(cell.reference_seed, []).append(cell.metrics[metric])
        values = [float(np.mean(v)) for _, v in sorted(per_seed.items())]
        out[metric] = float(np.mean(values))
        out[f"{metric}_std"] = float(np.std(values, ddof=1))
    return out


def test_aggregate_is_the_mean_and_std_over_reference_sets():
    cells = _cells(missing=("wood", "pretrained", 1))
    results = aggregate(cells, CATEGORIES, METHODS, KINDS)
    assert list(results) == [*CATEGORIES, "mean"]
    for kind in KINDS:
        for category in CATEGORIES:
            expected = _reference(cells, lambda c: (c.category, c.features) == (category, kind))
            assert results[category]["patchcore"][kind] == pytest.approx(expected, abs=1e-12)
        # the mean row: categories averaged per reference set first, then mean and std over the sets
        expected = _reference(cells, lambda c: c.features == kind)
        assert results["mean"]["patchcore"][kind] == pytest.approx(expected, abs=1e-12)


def test_one_reference_set_has_no_std_and_an_absent_kind_is_left_out():
    cells = [c for c in _cells(seeds=(0,)) if c.features == "backbone"]
    results = aggregate(cells, CATEGORIES, METHODS, KINDS)
    assert set(results["tile"]["patchcore"]) == {"backbone"}
    (cell,) = [c for c in cells if c.category == "tile"]
    assert results["tile"]["patchcore"]["backbone"] == cell.metrics  # no *_std keys with one set


def test_markdown_shows_percent_the_difference_and_the_std():
    base = {"image_auroc": 0.5, "pixel_auroc": 0.61234, "aupro": None}
    pretrained = {"image_auroc": 0.75, "pixel_auroc": 0.6, "aupro": 0.3, "image_auroc_std": 0.02,
                  "pixel_auroc_std": None, "aupro_std": None}
    results = {"tile": {"patchcore": {"backbone": base, "pretrained": pretrained}}, "mean": {"patchcore": {}}}
    lines = markdown_table(results, METHODS, KINDS, notes=["a note"]).splitlines()
    assert lines[0].startswith("Cells: ") and "± is the std over reference sets" in lines[0]
    assert lines[2] == "| category | PatchCore w/o | PatchCore w/ |"
    assert lines[3] == "| --- | ---: | ---: |"
    expected_base = f"{100 * 0.5:.1f} / {100 * 0.61234:.1f} / –"
    expected_pre = (f"{75:.1f}±{2:.1f} ({75 - 50:+.1f}) / {60:.1f} ({60 - 61.234:+.1f}) / {30:.1f}")
    assert lines[4] == f"| tile | {expected_base} | {expected_pre} |"
    assert lines[5] == "| **mean** | – | – |"
    assert lines[-1] == "- a note"


def test_csv_and_json_read_back(tmp_path):
    cells = _cells(missing=("tile", "backbone", 2))
    results = aggregate(cells, CATEGORIES, METHODS, KINDS)
    counts = {c: {"num_train": 8, "num_test": 4} for c in CATEGORIES}
    num_runs = {(c, "patchcore", k): len(SEEDS) for c in CATEGORIES for k in KINDS}
    write_csv(tmp_path / "r.csv", csv_rows(results, counts, num_runs))
    rows = list(csv.DictReader(open(tmp_path / "r.csv", encoding="utf-8")))
    assert len(rows) == (len(CATEGORIES) + 1) * len(KINDS)
    for row in rows:
        scores = results[row["category"]][row["method"]][row["features"]]
        for key in (*METRICS, *(f"{m}_std" for m in METRICS)):
            assert float(row[key]) == pytest.approx(scores[key], abs=1e-6)
        assert row["num_runs"] == ("3" if row["category"] != "mean" else "")
        assert row["num_train"] == ("8" if row["category"] != "mean" else "")
    write_json(tmp_path / "r.json", {"results": results})
    assert json.loads((tmp_path / "r.json").read_text())["results"] == results
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json(tmp_path / "nan.json", {"value": math.nan})  # a NaN would be unreadable downstream
