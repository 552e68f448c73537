"""Paired bootstrap intervals: stratified draws, multiplicities, percentile bounds, seeds and categories averaged;
then the runner's intervals against a brute-force bootstrap, and where they are shown (tables, chart, CLI)."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from adpretrain_hf.evaluation.bootstrap import (
    category_seed, draw_indices, paired_intervals, percentile_interval, weights_from_indices,
)
from adpretrain_hf.cli import main as cli_main
from adpretrain_hf.evaluation import evaluate_model
from adpretrain_hf.evaluation.cell import CellResult, compute_metrics
from adpretrain_hf.evaluation.config import METRICS
from adpretrain_hf.evaluation.plots import FIGURE_DPI
from adpretrain_hf.evaluation.report import aggregate, interval_text

from .helpers import CATEGORIES


def test_draws_keep_the_class_counts_and_repeat_with_the_seed():
    labels = [1, 0, 0, 1, 1, 0, 1]
    indices = draw_indices(labels, 200, seed=3)
    assert indices.shape == (200, 7)
    drawn_labels = np.asarray(labels)[indices]
    assert (drawn_labels.sum(axis=1) == 4).all()  # every resample: 3 normal + 4 anomalous images
    assert (draw_indices(labels, 200, seed=3) == indices).all()
    assert not (draw_indices(labels, 200, seed=4) == indices).all()
    assert len({tuple(row) for row in np.sort(indices, axis=1)}) > 100  # with replacement, varied


def test_weights_count_each_image_draw():
    indices = np.array([[0, 0, 2], [1, 2, 2]])
    assert weights_from_indices(indices, 4).tolist() == [[2, 0, 1, 0], [0, 1, 2, 0]]


def test_category_seeds_differ_per_category_and_are_stable():
    assert category_seed(0, "tile") == category_seed(0, "tile")
    assert category_seed(0, "tile") != category_seed(0, "bottle") != category_seed(1, "bottle")


def test_percentile_interval_is_numpys_and_needs_defined_resamples():
    rng = np.random.default_rng(0)
    values = rng.normal(size=1000)
    low, high, defined = percentile_interval(values, 0.9)
    assert (low, high, defined) == (np.percentile(values, 5), np.percentile(values, 95), 1000)
    values[:600] = np.nan
    assert percentile_interval(values, 0.9) == (None, None, 400)


def _run(category, method, kind, seed, replicates):
    metrics = {m: float(r[0]) for m, r in replicates.items()}  # resample 0 plays the observed sample here
    return CellResult(category, method, kind, seed, metrics, 4, 4, 0.0, 0.0, replicates=replicates)


def test_intervals_pair_the_resamples_average_seeds_then_categories():
    rng = np.random.default_rng(1)
    reps = {(c, k, s): {m: rng.random(50) for m in METRICS} for c in ("a", "b") for k in ("backbone", "pretrained") for s in (0, 1)}
    runs = [_run(c, "patchcore", k, s, reps[(c, k, s)]) for (c, k, s) in reps if not (k == "backbone" and s == 1)]
    results = aggregate(runs, ["a", "b"], ["patchcore"], ["backbone", "pretrained"])
    block = paired_intervals(runs, results, ["a", "b"], ["patchcore"], ["backbone", "pretrained"],
                             resamples=50, confidence=0.8, seed=0, mean_row="mean")
    assert "test images" in block["covers"] and "training seeds are not covered" in block["covers"]
    for metric in METRICS:
        per_category = {}
        for c in ("a", "b"):
            diffs = (reps[(c, "pretrained", 0)][metric] + reps[(c, "pretrained", 1)][metric]) / 2 - reps[(c, "backbone", 0)][metric]
            per_category[c] = diffs
            entry = block["results"][c]["patchcore"]["pretrained"][metric]
            assert entry["difference"] == results[c]["patchcore"]["pretrained"][metric] - results[c]["patchcore"]["backbone"][metric]
            assert np.allclose((entry["low"], entry["high"]), np.quantile(diffs, [0.1, 0.9]), rtol=0, atol=1e-15)
        mean = block["results"]["mean"]["patchcore"]["pretrained"][metric]
        expected = np.quantile((per_category["a"] + per_category["b"]) / 2, [0.1, 0.9])
        assert np.allclose((mean["low"], mean["high"]), expected, rtol=0, atol=1e-15)
        assert abs(mean["difference"] - (results["mean"]["patchcore"]["pretrained"][metric]
                                         - results["mean"]["patchcore"]["backbone"][metric])) < 1e-15


# -- the assembled loop: evaluate_model / `adpretrain evaluate --compare-backbone` ---------------
RESAMPLES = 40


@pytest.fixture(scope="module")
def interval_run(mvtec_root, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("intervals")
    predictions = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        payload = evaluate_model(model, mvtec_root, methods=("featurenorm", "patchcore"), kinds="backbone,residual,pretrained",
                                 output_dir=out, num_overlays=0, progress=False, print_markdown=False,
                                 bootstrap_resamples=RESAMPLES, bootstrap_seed=7, prediction_hook=predictions.append)
    return payload, predictions, out


def test_runner_intervals_equal_a_brute_force_bootstrap(interval_run):
    """Materialise each resample (same indices) and call the plain metrics on the hooked maps: the same interval."""
    payload, predictions, _ = interval_run
    block = payload["intervals"]
    assert (block["resamples"], block["seed"], block["baseline"]) == (RESAMPLES, 7, "backbone")
    cells = {(p.category, p.method, p.features): p for p in predictions}
    for category in CATEGORIES:
        labels = cells[(category, "featurenorm", "backbone")].labels.numpy()
        indices = draw_indices(labels.tolist(), RESAMPLES, category_seed(7, category))
        for method in ("featurenorm", "patchcore"):
            def metrics(kind):
                p = cells[(category, method, kind)]
                maps, scores, masks = p.maps.numpy(), p.scores.numpy(), p.masks.numpy()
                out = {m: [] for m in METRICS}
                for rows in indices:
                    for metric, value in compute_metrics(maps[rows], scores[rows], labels[rows], masks[rows]).items():
                        out[metric].append(np.nan if value is None else value)
                return {m: np.array(v) for m, v in out.items()}
            base = metrics("backbone")
            for kind in ("residual", "pretrained"):
                other = metrics(kind)
                for metric in METRICS:
                    entry = block["results"][category][method][kind][metric]
                    expected = np.quantile(other[metric] - base[metric], [0.025, 0.975])
                    assert np.allclose([entry["low"], entry["high"]], expected, rtol=0, atol=1e-12), (category, method, kind, metric)
                    full = payload["results"][category][method]
                    assert entry["difference"] == full[kind][metric] - full["backbone"][metric]
                    assert entry["low"] <= entry["high"]


def test_intervals_reach_the_tables_and_the_chart(interval_run):
    payload, _, out = interval_run
    entry = payload["intervals"]["results"]["mean"]["patchcore"]["pretrained"]["image_auroc"]
    text = interval_text(entry)
    assert text == f" [{100 * entry['low']:+.1f}, {100 * entry['high']:+.1f}]"
    markdown = (out / "results.md").read_text()
    assert text in markdown and "paired bootstrap 95% interval" in markdown
    with open(out / "results.csv", newline="") as handle:
        rows = {(r["category"], r["method"], r["features"]): r for r in csv.DictReader(handle)}
    row = rows[("mean", "patchcore", "pretrained")]
    assert float(row["image_auroc_diff_low"]) == pytest.approx(entry["low"], abs=1e-6)
    assert rows[("mean", "patchcore", "backbone")]["image_auroc_diff_low"] == ""
    with Image.open(out / "comparison.png") as chart:
        assert chart.height == 2 * 3.4 * FIGURE_DPI  # the second row: differences with their intervals


def test_cli_compare_backbone_writes_intervals(mvtec_root, tmp_path):
    out = tmp_path / "cli"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli_main(["evaluate", "--preset", "tiny-clip", "--data", str(mvtec_root), "--categories", "tile",
                         "--methods", "featurenorm", "--compare-backbone", "--bootstrap-resamples", "20", "--shots", "2",
                         "--output", str(out), "--num-overlays", "0", "--no-progress"])
    assert code == 0
    block = json.loads((out / "results.json").read_text())["intervals"]
    assert "test images" in block["covers"] and block["resamples"] == 20
    assert set(block["results"]["tile"]["featurenorm"]["pretrained"]) == set(METRICS)


def test_no_intervals_without_resamples_or_baseline(mvtec_root, model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = evaluate_model(model, mvtec_root, methods="featurenorm", num_overlays=0, progress=False, print_markdown=False,
                             bootstrap_resamples=0, categories="tile")
        alone = evaluate_model(model, mvtec_root, methods="featurenorm", num_overlays=0, progress=False, print_markdown=False,
                               compare_backbone=False, categories="tile")
    assert "intervals" not in off and "intervals" not in alone
