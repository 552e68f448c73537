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
