"""Thresholds and normalisation: pure math against numpy/sklearn, then calibrate() on a detector model."""

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_curve

from adpretrain_hf.deployment import calibrate, fit_detector, predict_maps
from adpretrain_hf.modeling.calibration_adpretrain import (
    f1_optimal_threshold,
    fit_threshold,
    normalize_scores,
    quantile_threshold,
    score_range,
)


def _sklearn_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    return float(thresholds[np.argmax(f1[:-1])])


@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_quantile_threshold_matches_numpy(q):
    scores = torch.randn(257, generator=torch.Generator().manual_seed(1))
    assert quantile_threshold(scores, q) == pytest.approx(float(np.quantile(scores.double().numpy(), q)), abs=1e-12)


def test_quantile_threshold_known_value_and_margin():
    scores = torch.arange(101, dtype=torch.float32) / 100  # 0.00 .. 1.00: the q-quantile is q
    assert quantile_threshold(scores, 0.99) == pytest.approx(0.99, abs=1e-6)
    assert quantile_threshold(scores, 1.0, margin=0.1) == pytest.approx(1.0 + 0.1 * 1.0, abs=1e-6)
    with pytest.raises(ValueError, match="quantile must be in"):
        quantile_threshold(scores, 99)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_threshold_matches_sklearn_precision_recall_curve(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(300, generator=g) < 0.3
    scores = torch.randn(300, generator=g) + 1.2 * labels.float()  # overlapping classes
    scores[:20] = scores[20:40]  # ties
    expected = _sklearn_f1_threshold(scores.double().numpy(), labels.numpy())
    assert f1_optimal_threshold(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_f1_threshold_recovers_a_known_separation():
    g = torch.Generator().manual_seed(3)
    normal, anomalous = torch.rand(80, generator=g), 2.0 + torch.rand(20, generator=g)
    scores = torch.cat([normal, anomalous])
    labels = torch.cat([torch.zeros(80), torch.ones(20)])
    # Perfectly separable: F1 = 1 exactly at the lowest anomalous score.
    assert f1_optimal_threshold(scores, labels) == pytest.approx(float(anomalous.min()), abs=1e-7)
    assert fit_threshold(scores, labels)[1] == "f1"
    with pytest.raises(ValueError, match="both normal and anomalous"):
        f1_optimal_threshold(scores, torch.zeros(100))


def test_normalize_scores_is_anomalib_min_max():
    scores = torch.tensor([-1.0, 0.0, 2.0, 3.0, 10.0])
    threshold, low, high = 2.0, 0.0, 4.0
    expected = np.clip((scores.numpy() - threshold) / (high - low) + 0.5, 0, 1)
    assert np.allclose(normalize_scores(scores, threshold, low, high).numpy(), expected)
    assert normalize_scores(torch.tensor([threshold]), threshold, low, high).item() == 0.5
    assert normalize_scores(torch.tensor([5.0]), 5.0, 1.0, 1.0).item() == 0.5  # constant validation set
    assert score_range(scores) == (-1.0, 10.0)


def _images(n, size, seed):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_calibrate_normal_only_and_labelled(tiny_clip_model):
    train, val = _images(8, 64, 0), _images(6, 64, 1)
    detector = fit_detector(tiny_clip_model, "featurenorm", train, progress=False, val_images=val, quantile=0.9)
    maps, scores = predict_maps(detector, val, progress=False)
    config = detector.config
    assert config.calibration == "quantile:0.9"
    assert config.image_threshold == pytest.approx(float(np.quantile(scores.double().numpy(), 0.9)), rel=1e-9)
    assert config.pixel_threshold == pytest.approx(float(np.quantile(maps.double().numpy(), 0.9)), rel=1e-9)
    assert (config.score_min, config.score_max) == pytest.approx((float(scores.min()), float(scores.max())))
    out = detector(val)
    assert torch.equal(out.label, out.score >= config.image_threshold)
    assert torch.equal(out.pred_mask, out.anomaly_map >= config.pixel_threshold)
    assert int(out.label.sum()) == 1  # 90 % quantile of 6 scores: only the largest is above it

    # Labelled, with masks: F1-optimal thresholds, image and pixel, as sklearn finds them.
    anomalous = val.clone()
    anomalous[:3, :, 16:32, 16:32] += 4.0
    masks = torch.zeros(6, 64, 64)
    masks[:3, 16:32, 16:32] = 1
    labels = [1, 1, 1, 0, 0, 0]
    calibrate(detector, anomalous, labels=labels, masks=masks, progress=False)
    maps, scores = predict_maps(detector, anomalous, progress=False)
    assert detector.config.calibration == "f1"
    assert detector.config.image_threshold == pytest.approx(_sklearn_f1_threshold(scores.double().numpy(), np.array(labels)))
    assert detector.config.pixel_threshold == pytest.approx(
        _sklearn_f1_threshold(maps.double().numpy().ravel(), masks.numpy().ravel().astype(int))
    )
    with pytest.raises(ValueError, match="one label"):
        calibrate(detector, anomalous, labels=[1, 0], progress=False)
