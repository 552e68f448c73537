"""Resampled metrics from per-image weights == the plain metrics on the materialised resample.

The independent computation: stack the drawn images (repeats included) and call
``adpretrain_hf.metrics`` (sklearn's AUROC, the exact PRO curve) on them, one resample at a time.
"""

from __future__ import annotations

import numpy as np
import pytest

from adpretrain_hf.evaluation.bootstrap import weights_from_indices
from adpretrain_hf.evaluation.weighted_metrics import ResampledMetrics, pair_counts, weighted_auroc
from adpretrain_hf.metrics import aupro, image_auroc, pixel_auroc

TOLERANCE = 1e-12  # float summation order differs (sklearn's trapezoids vs integer pair counts)


def _cell(seed: int = 0, num_normal: int = 5, num_anomalous: int = 7, size: int = 16):
    """Maps with ties (a flat patch, a repeated image score), 1-2 regions per defect, one defect without a mask."""
    rng = np.random.default_rng(seed)
    n = num_normal + num_anomalous
    labels = np.array([0] * num_normal + [1] * num_anomalous)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(num_normal, n - 1):
        y, x = rng.integers(0, size - 6, 2)
        masks[i, y:y + 4, x:x + 5] = True
        if i % 2:
            masks[i, 0:2, 0:2] = True
    maps = (rng.normal(size=(n, size, size)) + 1.5 * masks).astype(np.float32)
    maps[0, :4, :4] = 0.5
    maps[num_normal, -3:, -3:] = 0.5
    scores = maps.reshape(n, -1).max(axis=1).astype(np.float64)
    scores[1] = scores[num_normal + 1]
    return maps, scores, labels, masks


def _plain(maps, scores, labels, masks, rows, fpr_limit=0.3):
    return {"image_auroc": image_auroc(scores[rows], labels[rows]), "pixel_auroc": pixel_auroc(maps[rows], masks[rows]),
            "aupro": aupro(maps[rows], masks[rows], fpr_limit=fpr_limit)}


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_every_resample_equals_the_plain_metrics_on_the_materialised_images(fpr_limit):
    maps, scores, labels, masks = _cell()
    n = labels.size
    rng = np.random.default_rng(1)
    indices = rng.integers(0, n, size=(40, n))
    indices[:, :2] = [0, 6]  # both classes and some defect pixels in every resample
    indices[0] = np.arange(n)  # the identity resample: the cell's own metrics
    got = ResampledMetrics(maps, scores, labels, masks, fpr_limit=fpr_limit)(weights_from_indices(indices, n))
    for b, rows in enumerate(indices):
        expected = _plain(maps, scores, labels, masks, rows, fpr_limit)
        for metric, value in expected.items():
            assert abs(got[metric][b] - value) < TOLERANCE, (b, metric, got[metric][b], value)


def test_undefined_resamples_are_nan_not_a_number():
    maps, scores, labels, masks = _cell()
    only_normals = np.zeros((1, labels.size), dtype=np.int64)
    only_normals[0, 0] = 5
    no_defect_pixels = np.zeros((1, labels.size), dtype=np.int64)
    no_defect_pixels[0, [0, labels.size - 1]] = 1  # the last anomalous image has no mask
    got = ResampledMetrics(maps, scores, labels, masks)(np.concatenate([only_normals, no_defect_pixels]))
    assert np.isnan(got["image_auroc"][0]) and np.isnan(got["pixel_auroc"][0]) and np.isnan(got["aupro"][0])
    assert got["image_auroc"][1] == image_auroc(scores[[0, labels.size - 1]], labels[[0, labels.size - 1]])
    assert np.isnan(got["pixel_auroc"][1]) and np.isnan(got["aupro"][1])


def test_pair_counts_against_a_double_loop():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, size=30).astype(float)  # many ties
    positive = rng.random(30) < 0.4
    image_of = rng.integers(0, 4, size=30)
    expected = np.zeros((4, 4), dtype=np.int64)
    for p in np.flatnonzero(positive):
        for q in np.flatnonzero(~positive):
            expected[image_of[p], image_of[q]] += 2 * (scores[p] > scores[q]) + (scores[p] == scores[q])
    assert (pair_counts(scores, positive, image_of, 4) == expected).all()
    weights = rng.integers(0, 3, size=(5, 4))
    pos = np.bincount(image_of[positive], minlength=4)
    neg = np.bincount(image_of[~positive], minlength=4)
    got = weighted_auroc(expected, pos, neg, weights)
    for b, w in enumerate(weights):
        rows = np.concatenate([np.flatnonzero(image_of == i).repeat(1) for i in range(4) for _ in range(w[i])]).astype(int)
        if positive[rows].any() and (~positive[rows]).any():
            assert abs(got[b] - image_auroc(scores[rows], positive[rows].astype(int))) < TOLERANCE
        else:
            assert np.isnan(got[b])


def test_wrong_weight_shape_is_a_one_line_error():
    maps, scores, labels, masks = _cell()
    with pytest.raises(ValueError, match="image multiplicities"):
        ResampledMetrics(maps, scores, labels, masks)(np.ones((3, labels.size + 1)))


# -- the streamed counts (evaluation/ranked_pairs.py): chunking, checkpoints and ties change nothing ------------
def _tied_cell(seed: int, levels: int, num_images: int = 9, size: int = 12):
    """Maps rounded to ``levels`` grey levels (ties within and across images, normal and defect pixels)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_images, size, size), dtype=bool)
    for i in range(2, num_images):
        y, x = rng.integers(0, size - 4, 2)
        masks[i, y:y + rng.integers(1, 5), x:x + rng.integers(1, 5)] = True
    maps = np.round((rng.normal(size=masks.shape) + masks) * levels / 4).astype(np.float32)
    labels = masks.reshape(num_images, -1).any(axis=1).astype(int)
    return maps, maps.reshape(num_images, -1).max(axis=1).astype(np.float64), labels, masks


def _small_chunks(monkeypatch, elements: int, checkpoint_bytes: int) -> None:
    from adpretrain_hf.evaluation import ranked_pairs, weighted_metrics

    monkeypatch.setattr(ranked_pairs, "CHUNK_ELEMENTS", elements)
    monkeypatch.setattr(weighted_metrics, "CHUNK_ELEMENTS", elements)
    monkeypatch.setattr(weighted_metrics, "CHECKPOINT_BYTES", checkpoint_bytes)


@pytest.mark.parametrize("levels", [3, 12, 0])  # 0: continuous scores
@pytest.mark.parametrize("elements, checkpoint_bytes", [(40, 1), (200, 2000), (10**6, 10**8)])
def test_pixel_auroc_equals_sklearns_weighted_auroc(levels, elements, checkpoint_bytes, monkeypatch):
    """Independent: sklearn's ROC AUC of all pixels with sample weight = the image's multiplicity (ties count 1/2)."""
    from sklearn.metrics import roc_auc_score

    _small_chunks(monkeypatch, elements, checkpoint_bytes)
    maps, scores, labels, masks = _tied_cell(levels, levels or 50)
    if levels == 0:
        maps = maps + np.random.default_rng(0).normal(size=maps.shape).astype(np.float32) * 1e-3
    n = labels.size
    weights = np.random.default_rng(levels).integers(0, 4, size=(12, n))
    weights[:, [0, n - 1]] = np.maximum(weights[:, [0, n - 1]], 1)  # normal and defect pixels in every resample
    got = ResampledMetrics(maps, scores, labels, masks)(weights)["pixel_auroc"]
    for b, w in enumerate(weights):
        pixel_weight = np.repeat(w, maps[0].size)
        expected = roc_auc_score(masks.reshape(-1), maps.reshape(-1), sample_weight=pixel_weight)
        assert abs(got[b] - expected) < TOLERANCE, (b, got[b], expected)


@pytest.mark.parametrize("levels", [3, 12])
@pytest.mark.parametrize("elements, checkpoint_bytes, exact_in_float", [(40, 1, True), (200, 2000, False), (10**6, 10**8, True)])
def test_chunks_checkpoints_and_ties_leave_aupro_and_pair_counts_unchanged(levels, elements, checkpoint_bytes,
                                                                          exact_in_float, monkeypatch):
    """Tiny chunks (many stream steps and checkpoints, stops inside and at chunk ends) against the materialised
    resamples (the plain AUPRO, exact PRO curve) and the pair counts against a double loop over pixel pairs."""
    from adpretrain_hf.evaluation import weighted_metrics

    _small_chunks(monkeypatch, elements, checkpoint_bytes)
    if not exact_in_float:
        monkeypatch.setattr(weighted_metrics, "FLOAT64_EXACT_INTEGERS", 0)  # the integer-product path
    maps, scores, labels, masks = _tied_cell(levels, levels)
    n = labels.size
    rng = np.random.default_rng(levels + 1)
    indices = rng.integers(0, n, size=(25, n))
    indices[:, :2] = [0, n - 1]
    metrics = ResampledMetrics(maps, scores, labels, masks)
    got = metrics(weights_from_indices(indices, n))["aupro"]
    for b, rows in enumerate(indices):
        assert abs(got[b] - aupro(maps[rows], masks[rows])) < TOLERANCE, b
    flat, positive, image_of = maps.reshape(-1), masks.reshape(-1), np.repeat(np.arange(n), maps[0].size)
    expected = np.zeros((n, n), dtype=np.int64)
    for p in np.flatnonzero(positive):
        neg = ~positive
        np.add.at(expected[image_of[p]], image_of[neg], 2 * (flat[p] > flat[neg]) + (flat[p] == flat[neg]))
    assert (metrics.pixel_counts == expected).all()
    assert (pair_counts(flat, positive, image_of, n) == expected).all()
