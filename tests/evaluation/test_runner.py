"""The Table-1 runner end to end on tiny synthetic data with the random tiny-clip preset.

Random weights: these tests check plumbing (what is fitted, what is scored, what is written,
which protocol selected what), never detection quality. Metrics of one cell are recomputed
here from the predicted maps with sklearn and a brute-force PRO sweep, independently of
``adpretrain_hf.metrics``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import statistics
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from adpretrain_hf.data import generate_dataset
from adpretrain_hf.evaluation import METRICS, evaluate_model

from .helpers import CATEGORIES, NUM_ANOMALOUS, NUM_NORMAL, brute_force_aupro

FULL_METHODS = ("featurenorm", "patchcore", "padim", "cflow")  # cflow: a trained method, quick=True
FAST = dict(methods=("featurenorm",), compare_backbone=False, num_overlays=0, progress=False, print_markdown=False)


@pytest.fixture(scope="module")
def full_run(mvtec_root, model, tmp_path_factory):
    """One run with every training-free method + CFLOW (quick), both feature kinds, outputs written."""
    out = tmp_path_factory.mktemp("eval")
    predictions = []
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shots=8 > 4 normal images warns per category
        payload = evaluate_model(model, mvtec_root, methods=FULL_METHODS, quick=True, output_dir=out, num_overlays=2,
                                 progress=False, prediction_hook=predictions.append)
    return payload, predictions, stdout.getvalue(), out


def run_quiet(model, root, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_model(model, root, **{**FAST, **kwargs})


# -- the full run ----------------------------------------------------------------------------
def test_every_cell_has_all_metrics_in_unit_interval(full_run):
    payload, _, _, _ = full_run
    results = payload["results"]
    assert list(results) == sorted(CATEGORIES) + ["mean"]
    for row in results.values():
        assert set(row) == set(FULL_METHODS)
        for method in FULL_METHODS:
            assert set(row[method]) == {"backbone", "pretrained"}
            for scores in row[method].values():
                assert set(scores) == set(METRICS)  # one reference set: no _std entries
                assert all(0.0 <= scores[m] <= 1.0 for m in METRICS)
    for method in FULL_METHODS:  # the mean row is the mean over categories
        for kind in ("backbone", "pretrained"):
            for m in METRICS:
                expected = np.mean([results[c][method][kind][m] for c in CATEGORIES])
                assert results["mean"][method][kind][m] == pytest.approx(expected, abs=1e-12)


def test_outputs_written(full_run):
    payload, _, stdout, out = full_run
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(payload))
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == (len(CATEGORIES) + 1) * len(FULL_METHODS) * 2
    for row in rows:
        assert all(0.0 <= float(row[m]) <= 1.0 for m in METRICS)
        if row["category"] != "mean":
            assert float(row["image_auroc"]) == pytest.approx(payload["results"][row["category"]][row["method"]][row["features"]]["image_auroc"], abs=1e-6)
    assert "| category | FeatureNorm w/o | FeatureNorm w/ |" in stdout
    assert "**mean**" in stdout and "quick=True" in stdout
    assert (out / "results.md").read_text() in stdout
    for category in CATEGORIES:
        pngs = sorted((out / "overlays" / category).glob("*.png"))
        assert len(pngs) == 2
        assert "test_good" not in pngs[0].name  # anomalous images come first
        with Image.open(pngs[0]) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    with Image.open(out / "comparison.png") as chart:
        assert chart.format == "PNG"
    assert payload["config"]["methods"] == list(FULL_METHODS) and payload["config"]["quick"] is True
    assert payload["protocol"]["per_category"]["tile"]["num_train"] == NUM_NORMAL


def test_metrics_equal_independent_recomputation(full_run):
    payload, predictions, _, _ = full_run
    assert len(predictions) == len(CATEGORIES) * len(FULL_METHODS) * 2
    for method, kind in (("padim", "pretrained"), ("cflow", "backbone")):
        cell = next(p for p in predictions if (p.category, p.method, p.features) == ("tile", method, kind))
        stored = payload["results"]["tile"][method][kind]
        maps, masks = cell.maps.numpy(), cell.masks.numpy()
        assert maps.shape == masks.shape == (NUM_ANOMALOUS * 2, 64, 64)
        assert cell.labels.tolist() == [int(m.any()) for m in masks]
        assert stored["image_auroc"] == pytest.approx(roc_auc_score(cell.labels.numpy(), cell.scores.numpy()), abs=1e-9)
        assert stored["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
        assert stored["aupro"] == pytest.approx(brute_force_aupro(maps, masks), abs=1e-6)


# -- protocols -------------------------------------------------------------------------------
def test_train_fraction_subsamples_normal_training_images(mvtec_root, model):
    payload = run_quiet(model, mvtec_root, train_fraction=0.5, shots=2)
    again = run_quiet(model, mvtec_root, train_fraction=0.5, shots=2)
    for category in CATEGORIES:
        record = payload["protocol"]["per_category"][category]
        assert (record["num_train_normal_available"], record["num_train_normal"], record["num_train"]) == (4, 2, 2)
        assert record["num_test"] == 4
        assert record["train_sample_ids"] == again["protocol"]["per_category"][category]["train_sample_ids"]  # seeded
    assert {run["num_train"] for run in payload["runs"]} == {2}
    assert payload["protocol"]["train_fraction"] == 0.5


def test_train_shots_uses_exactly_that_many(mvtec_root, model):
    payload = run_quiet(model, mvtec_root, train_shots=2)
    for category in CATEGORIES:
        record = payload["protocol"]["per_category"][category]
        assert record["num_train"] == 2 and record["num_references"] == 2  # references come from the 2 shots
        refs = payload["references"][category]["sets"][0]["sample_ids"]
        assert set(refs) == set(record["train_sample_ids"])
    assert {run["num_train"] for run in payload["runs"]} == {2}
    with pytest.raises(ValueError, match="train_shots"):
        run_quiet(model, mvtec_root, train_shots=5)  # more than the 4 normal images


def test_noise_ratio_adds_anomalous_test_images_to_training(mvtec_root, model):
    payload = run_quiet(model, mvtec_root, noise_ratio=0.5, shots=4)  # int(0.5 * 4) = 2 anomalous images
    for category in CATEGORIES:
        record = payload["protocol"]["per_category"][category]
        assert (record["num_train_normal"], record["num_noise"], record["num_train"], record["num_test"]) == (4, 2, 6, 4)
        assert all("/good/" not in sid and sid.startswith(f"{category}/test/") for sid in record["noise_sample_ids"])
        refs = payload["references"][category]["sets"][0]["sample_ids"]
        assert not set(refs) & set(record["noise_sample_ids"])  # references stay normal
    assert {run["num_train"] for run in payload["runs"]} == {6} and {run["num_test"] for run in payload["runs"]} == {4}
    assert payload["protocol"]["noise_setting"] == "overlap"


def test_reference_seeds_give_mean_and_std(mvtec_root, model):
    payload = run_quiet(model, mvtec_root, reference_seeds=3, shots=2, compare_backbone=True)
    assert payload["protocol"]["reference_strategy"] == "random"  # "first" would repeat one set
    assert payload["protocol"]["reference_seeds"] == [0, 1, 2]
    for category in CATEGORIES:
        sets = payload["references"][category]["sets"]
        assert [s["seed"] for s in sets] == [0, 1, 2]
        assert len({tuple(s["pool_positions"]) for s in sets}) > 1
        runs = [r for r in payload["runs"] if (r["category"], r["features"]) == (category, "pretrained")]
        stored = payload["results"][category]["featurenorm"]["pretrained"]
        assert len(runs) == 3
        for m in METRICS:
            assert stored[m] == pytest.approx(statistics.fmean(r[m] for r in runs), abs=1e-12)
            assert stored[f"{m}_std"] == pytest.approx(statistics.stdev(r[m] for r in runs), abs=1e-12)
        assert "image_auroc_std" not in payload["results"][category]["featurenorm"]["backbone"]  # run once
    assert "aupro_std" in payload["results"]["mean"]["featurenorm"]["pretrained"]


@pytest.mark.parametrize("strategy", ["random", "kmeans", "aligned"])
def test_reference_strategies_are_recorded(mvtec_root, model, strategy):
    payload = run_quiet(model, mvtec_root, categories=["tile"], reference_strategy=strategy, shots=2)
    record = payload["references"]["tile"]
    pool = set(payload["protocol"]["per_category"]["tile"]["train_sample_ids"])
    assert record["strategy"] == strategy == payload["config"]["effective_reference_strategy"]
    chosen = record["sets"][0]
    if strategy == "aligned":
        per_test = chosen["per_test_image"]
        assert len(per_test) == 4 and all(sid.startswith("tile/test/") for sid in per_test)
        assert all(len(refs) == 2 and set(refs) <= pool for refs in per_test.values())
    else:
        assert len(chosen["sample_ids"]) == 2 and set(chosen["sample_ids"]) <= pool
        assert all(path.startswith("tile/train/good/") for path in chosen["paths"])


def test_realiad_split_is_deterministic_and_recorded(tmp_path, model):
    root = tmp_path / "realiad"
    generate_dataset(root, layout="realiad", categories=["tile"], num_normal=4, num_anomalous=2, image_size=64, seed=0,
                     num_views=2, progress=False)
    first = run_quiet(model, root, split_seed=1, realiad_fit_fraction=0.5, shots=2)
    second = run_quiet(model, root, layout="realiad", split_seed=1, realiad_fit_fraction=0.5, shots=2)
    split = first["protocol"]["realiad_split"]
    assert split == second["protocol"]["realiad_split"]
    assert (split["fit_fraction"], split["seed"]) == (0.5, 1)
    assert len(split["per_category"]["tile"]["fit_sample_ids"]) == 2  # round(0.5 * 4) OK samples
    assert first["config"]["layout_resolved"] == "realiad"
    record = first["protocol"]["per_category"]["tile"]
    assert record["num_train"] == 4 and record["num_test"] == 8  # 2 fit samples x 2 views; the rest is test
    assert {sid.rsplit("/", 1)[0] for sid in record["train_sample_ids"]} == set(split["per_category"]["tile"]["fit_sample_ids"])


# -- errors ----------------------------------------------------------------------------------
def test_api_errors(mvtec_root, model, tmp_path):
    with pytest.raises(ValueError, match=r"unknown method.*choose from.*patchcore"):
        evaluate_model(model, mvtec_root, methods=["featurenorm", "nope"])
    with pytest.raises(ValueError, match="not an existing folder"):
        evaluate_model(model, tmp_path / "missing", **FAST)
    with pytest.raises(ValueError, match=r"\['carpet'\] not found.*available"):
        evaluate_model(model, mvtec_root, categories=["carpet"], **FAST)
    with pytest.raises(TypeError, match="ADPretrainModel"):
        evaluate_model(42, mvtec_root, **FAST)


# -- detector protocols (issue 19) -----------------------------------------------------------
def test_release_and_package_protocols_run_different_detectors(mvtec_root, model):
    """The assembled runner: --protocol release runs the release variants (other numbers than the
    package's for every training-free method) and PaDiM's global min-max per category."""
    methods = ("featurenorm", "patchcore", "padim")
    runs = {}
    for protocol in ("release", "package"):
        predictions = []
        payload = run_quiet(model, mvtec_root, methods=methods, protocol=protocol, prediction_hook=predictions.append)
        record = payload["protocol"]["detector_protocol"]
        assert record["name"] == protocol and record["detector_options"]["padim"]["variant"] == protocol
        runs[protocol] = {(p.category, p.method): p for p in predictions}
    assert set(runs["release"]) == {(c, m) for c in CATEGORIES for m in methods}
    for key, release in runs["release"].items():
        package = runs["package"][key]
        assert release.maps.shape == package.maps.shape
        assert not torch.allclose(release.maps, package.maps, rtol=1e-3, atol=1e-3), key
        assert not torch.allclose(release.scores, package.scores, rtol=1e-3, atol=1e-3), key
        if key[1] == "padim":  # one min and max over the category's test set: its largest score is exactly 1
            assert float(release.scores.max()) == 1.0 and float(release.maps.min()) == 0.0
            assert float(package.scores.max()) != 1.0
