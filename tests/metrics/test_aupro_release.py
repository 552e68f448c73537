"""The release's AUPRO variant (200 thresholds, strict '>') against a slow loop."""

from __future__ import annotations

import numpy as np
import pytest

from adpretrain_hf.metrics import aupro
from tests.metrics.slow_references import TOL, blob_masks, noisy_maps, slow_release_aupro


# --------------------------------------------------------------------------- AUPRO (release)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_release_aupro_matches_slow_loop(seed):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng)
    maps = noisy_maps(rng, masks)
    got = aupro(maps, masks, variant="release")
    assert got == pytest.approx(slow_release_aupro(maps, masks), abs=TOL)
    assert abs(got - aupro(maps, masks)) > 1e-4  # a different number from the standard one


def test_release_aupro_scores_on_the_threshold_grid():
    """Integer scores 0..200 put pixels exactly on thresholds t_k = k, so strict '>' matters
    (normal pixels at 199 and 200 make the lowest FPR depend on it); 24 of 80 normal pixels
    above 100 give points with FPR exactly 0.3, so the strict '< fpr_limit' matters."""
    rng = np.random.default_rng(12)
    masks = np.zeros((1, 10, 10), dtype=np.uint8)
    masks[0, 2:6, 3:8] = 1  # 20 anomalous, 80 normal pixels
    maps = rng.integers(0, 101, masks.shape).astype(np.float64)
    flat = maps.reshape(-1)
    normal = np.flatnonzero(masks.reshape(-1) == 0)
    flat[np.flatnonzero(masks.reshape(-1))] = rng.integers(90, 200, 20)
    flat[normal[0]], flat[normal[1]] = 0.0, 200.0  # pin min and max
    flat[normal[2:4]] = 199.0
    flat[normal[4:25]] = 150.0
    got = aupro(maps, masks, variant="release")
    assert got == pytest.approx(slow_release_aupro(maps, masks), abs=TOL)
    # Random integer maps, many ties on thresholds.
    masks = blob_masks(rng)
    maps = np.clip(rng.integers(0, 170, masks.shape) + 30 * masks, 0, 200).astype(np.float64)
    maps[0, 0, 0], maps[0, 0, 1] = 0.0, 200.0
    assert aupro(maps, masks, variant="release") == pytest.approx(
        slow_release_aupro(maps, masks), abs=TOL
    )


def test_release_aupro_degenerate_inputs_raise():
    masks = np.eye(4)[None]
    with pytest.raises(ValueError, match="two distinct values"):
        aupro(np.ones((1, 4, 4)), masks, variant="release")
    with pytest.raises(ValueError, match="fewer than two distinct FPR"):
        aupro(1.0 - masks, masks, variant="release")  # every kept FPR is 0
