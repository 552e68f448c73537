"""CenterEstimator and RunningCenter against the mean of the normal rows computed here."""

from __future__ import annotations

import pytest
import torch

from adpretrain_hf.losses import CenterEstimator, RunningCenter
from tests.losses.slow_references import F64


# --------------------------------------------------------------------------- centers


def _center_batches(seed, steps=3):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        feats = [1e3 + torch.randn(2, 6, 4, generator=g), torch.randn(2, 3, 7, generator=g)]
        labels = [torch.rand(2, 6, generator=g) < 0.3, torch.rand(2, 3, generator=g) < 0.3]
        labels[1][0, 0] = False
        batches.append((feats, labels))
    return batches


def test_center_estimator_matches_mean_of_normal_rows():
    batches = _center_batches(40)
    estimator = CenterEstimator()
    for feats, labels in batches:
        estimator.update(feats, labels)
    centers = estimator.compute(dtype=F64)
    for layer in range(2):
        rows = torch.cat([f[layer].double()[~lab[layer]] for f, lab in batches])
        torch.testing.assert_close(centers[layer], rows.mean(0), rtol=1e-12, atol=1e-12)
        assert estimator.num_seen[layer] == rows.shape[0]
    assert estimator.compute()[0].dtype == torch.float32


def test_center_estimator_all_normal_and_errors():
    feats = [torch.randn(2, 4, 3, requires_grad=True)]
    estimator = CenterEstimator()
    with pytest.raises(ValueError, match="before compute"):
        estimator.compute()
    estimator.update(feats)  # labels=None: all normal; no graph is kept
    torch.testing.assert_close(estimator.compute(F64)[0], feats[0].detach().double().reshape(-1, 3).mean(0))
    only_anomalous = CenterEstimator()
    only_anomalous.update(feats, [torch.ones(2, 4, dtype=torch.bool)])
    with pytest.raises(ValueError, match="no normal patch feature seen for layer 0"):
        only_anomalous.compute()
    with pytest.raises(ValueError, match="tracks 1"):
        estimator.update(feats * 2)
    with pytest.raises(ValueError, match="channels"):
        estimator.update([torch.randn(2, 4, 5)])


def test_running_center_moving_average_and_cumulative():
    batches = _center_batches(41, steps=4)
    batches[2][1][0] = torch.ones(2, 6, dtype=torch.bool)  # layer 0 has no normal patch at step 2
    ema, cumulative, reference = RunningCenter(momentum=0.9), RunningCenter(momentum=None), CenterEstimator()
    expected = [None, None]
    for feats, labels in batches:
        for est in (ema, cumulative, reference):
            est.update(feats, labels)
        for layer in range(2):
            rows = feats[layer].double()[~labels[layer]]
            if rows.shape[0]:
                mean = rows.mean(0)
                expected[layer] = mean if expected[layer] is None else 0.9 * expected[layer] + 0.1 * mean
    for layer in range(2):
        torch.testing.assert_close(ema.compute(F64)[layer], expected[layer], rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(cumulative.compute(F64)[layer], reference.compute(F64)[layer])
    restored = RunningCenter(momentum=0.9)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.compute(F64)[0], ema.compute(F64)[0])


def test_running_center_initial_value():
    initial = [torch.zeros(4), torch.ones(7)]
    running = RunningCenter(momentum=0.5, initial=initial)
    torch.testing.assert_close(running.compute()[1], torch.ones(7))
    feats = [torch.full((1, 2, 4), 2.0), torch.full((1, 2, 7), 3.0)]
    running.update(feats, [torch.zeros(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)])
    torch.testing.assert_close(running.compute()[0], torch.full((4,), 1.0))  # 0.5 * 0 + 0.5 * 2
    torch.testing.assert_close(running.compute()[1], torch.ones(7))  # no normal patch: unchanged
    with pytest.raises(ValueError, match="momentum"):
        RunningCenter(momentum=1.0)
