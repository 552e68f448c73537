"""Cells -> Table 1: aggregation over reference seeds and categories, markdown, JSON, CSV.

Numbers are stored in [0, 1] (JSON, CSV) and shown in % (markdown), as in the paper.
With several reference sets, a value is the mean over the sets and ``<metric>_std`` the
sample standard deviation (ddof=1) over them; the "mean" row averages the categories per
reference set first, then takes mean and std over the sets (Table 4's dataset-level ±).
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from ..metrics.names import METRIC_LABELS
from .cell import CellResult
from .config import METRICS

MEAN_ROW = "mean"
DISPLAY_NAMES = {"featurenorm": "FeatureNorm", "patchcore": "PatchCore", "padim": "PaDiM", "cflow": "CFLOW", "glass": "GLASS", "uniad": "UniAD"}
KIND_LABELS = {"backbone": "w/o", "residual": "res.", "pretrained": "w/"}
INTERVAL_SUFFIXES = ("_diff", "_diff_low", "_diff_high")
"""CSV columns per metric: the difference to w/o and its paired bootstrap interval (``results.json``'s ``intervals``)."""
CSV_COLUMNS = ("category", "method", "features", *METRICS, *(f"{m}_std" for m in METRICS),
               *(f"{m}{suffix}" for m in METRICS for suffix in INTERVAL_SUFFIXES), "num_runs", "num_train", "num_test")


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(statistics.fmean(present)) if present else None


def _summary(per_seed: Sequence[dict[str, Optional[float]]]) -> dict[str, Optional[float]]:
    """Mean over seeds; ``<metric>_std`` (ddof=1) only when there are several."""
    out: dict[str, Optional[float]] = {}
    for metric in METRICS:
        values = [run[metric] for run in per_seed if run[metric] is not None]
        out[metric] = float(statistics.fmean(values)) if values else None
    if len(per_seed) > 1:
        for metric in METRICS:
            values = [run[metric] for run in per_seed if run[metric] is not None]
            out[f"{metric}_std"] = float(statistics.stdev(values)) if len(values) > 1 else None
    return out


def aggregate(runs: Sequence[CellResult], categories: Sequence[str], methods: Sequence[str], kinds: Sequence[str]) -> dict[str, Any]:
    """``{category | "mean": {method: {kind: {metric: v, [metric_std: s]}}}}`` from the cells."""
    results: dict[str, Any] = {}
    for category in categories:
        results[category] = {}
        for method in methods:
            results[category][method] = {}
            for kind in kinds:
                cells = [r for r in runs if (r.category, r.method, r.features) == (category, method, kind)]
                if cells:
                    results[category][method][kind] = _summary([c.metrics for c in sorted(cells, key=lambda c: c.reference_seed)])
    results[MEAN_ROW] = {}
    for method in methods:
        results[MEAN_ROW][method] = {}
        for kind in kinds:
            seeds = sorted({r.reference_seed for r in runs if (r.method, r.features) == (method, kind)})
            per_seed = []
            for seed in seeds:
                cells = [r for r in runs if (r.method, r.features, r.reference_seed) == (method, kind, seed)]
                per_seed.append({m: _mean([c.metrics[m] for c in cells]) for m in METRICS})
            if per_seed:
                results[MEAN_ROW][method][kind] = _summary(per_seed)
    return results


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def interval_text(entry: Optional[dict[str, Any]]) -> str:
    """``" [-1.3, +5.4]"`` (percentage points) from an ``intervals`` entry; empty without bounds."""
    if not entry or entry.get("low") is None or entry.get("high") is None:
        return ""
    return f" [{100 * entry['low']:+.1f}, {100 * entry['high']:+.1f}]"


def _cell_text(scores: dict[str, Optional[float]], base: Optional[dict[str, Optional[float]]],
               intervals: Optional[dict[str, Any]] = None) -> str:
    """``"98.1 / 97.2 / 91.8"``; with a baseline ``"98.1 (+4.7) / ..."``, with its interval
    ``"98.1 (+4.7 [+1.2, +8.0]) / ..."``; with std ``"98.1±0.2 (+4.7 ...)"``."""
    parts = []
    for metric in METRICS:
        text = _pct(scores.get(metric))
        std = scores.get(f"{metric}_std")
        if std is not None:
            text += f"±{100 * std:.1f}"
        if base is not None and scores.get(metric) is not None and base.get(metric) is not None:
            text += f" ({100 * (scores[metric] - base[metric]):+.1f}{interval_text((intervals or {}).get(metric))})"
        parts.append(text)
    return " / ".join(parts)


def markdown_table(results: dict[str, Any], methods: Sequence[str], kinds: Sequence[str], notes: Sequence[str] = (),
                   intervals: Optional[dict[str, Any]] = None) -> str:
    """Table 1's layout: a row per category and the mean, ``w/o`` and ``w/`` per method side by side.

    ``intervals`` (the ``results.json`` block of :func:`~adpretrain_hf.evaluation.bootstrap.paired_intervals`)
    adds each difference's paired bootstrap interval in brackets.
    """
    header = ["category"]
    for method in methods:
        header += [f"{DISPLAY_NAMES.get(method, method)} {KIND_LABELS[kind]}" for kind in kinds]
    has_std = any(key.endswith("_std") for row in results.values() for per in row.values() for s in per.values() for key in s)
    legend = "Cells: " + " / ".join(METRIC_LABELS[m] for m in METRICS) + " in %"
    if "backbone" in kinds:
        shown = "`w/` and `res.` (residual features, no projector)" if "residual" in kinds else "`w/`"
        legend += f"; {shown} cells give the difference to `w/o` in parentheses"
    if intervals:
        legend += (f"; [low, high] is the paired bootstrap {100 * intervals['confidence']:g}% interval of that difference "
                   f"over test images ({intervals['resamples']} resamples; reference sets fixed, training seeds not covered)")
    if has_std:
        legend += "; ± is the std over reference sets"
    lines = [
        legend + ".",
        "",
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
    ]
    for category, row in results.items():
        name = f"**{category}**" if category == MEAN_ROW else category
        cells = [name]
        for method in methods:
            per_kind = row.get(method, {})
            for kind in kinds:
                scores = per_kind.get(kind)
                base = per_kind.get("backbone") if kind != "backbone" and "backbone" in kinds else None
                bounds = ((intervals or {}).get("results", {}).get(category, {}).get(method, {}).get(kind))
                cells.append("–" if scores is None else _cell_text(scores, base, bounds))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def csv_rows(results: dict[str, Any], counts: dict[str, dict[str, int]], num_runs: dict[tuple[str, str, str], int],
             intervals: Optional[dict[str, Any]] = None) -> list[dict[str, Any]]:
    """One row per category (and "mean") x method x feature kind, values in [0, 1]; the w/ and res. rows
    carry ``<metric>_diff`` (minus w/o) and its interval ``<metric>_diff_low`` / ``_diff_high``."""
    rows = []
    for category, by_method in results.items():
        for method, by_kind in by_method.items():
            for kind, scores in by_kind.items():
                row: dict[str, Any] = {"category": category, "method": method, "features": kind}
                for metric in METRICS:
                    row[metric] = scores.get(metric)
                    row[f"{metric}_std"] = scores.get(f"{metric}_std")
                    entry = ((intervals or {}).get("results", {}).get(category, {}).get(method, {}).get(kind) or {}).get(metric) or {}
                    for suffix, key in zip(INTERVAL_SUFFIXES, ("difference", "low", "high")):
                        row[f"{metric}{suffix}"] = entry.get(key)
                row["num_runs"] = num_runs.get((category, method, kind), "")
                row["num_train"] = counts.get(category, {}).get("num_train", "")
                row["num_test"] = counts.get(category, {}).get("num_test", "")
                rows.append(row)
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)) for k, v in row.items()})


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
