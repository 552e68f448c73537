"""image_auroc and pixel_auroc against an explicit pairwise (Mann-Whitney) count; their input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adpretrain_hf.metrics import image_auroc, pixel_auroc
from tests.metrics.slow_references import blob_masks, noisy_maps, slow_auroc


# --------------------------------------------------------------------------- AUROC
@pytest.mark.parametrize("seed", [0, 1])
def test_image_auroc_matches_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    scores = np.round(labels * 0.3 + rng.random(40), 1)  # rounding makes ties
    assert image_auroc(scores, labels) == pytest.approx(slow_auroc(scores, labels), abs=1e-12)
    as_torch = image_auroc(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels))
    assert as_torch == pytest.approx(slow_auroc(scores, labels), abs=1e-12)


def test_pixel_auroc_matches_pairwise_count_and_accepts_channel_dim():
    rng = np.random.default_rng(2)
    masks = blob_masks(rng, n=4, size=10)
    maps = noisy_maps(rng, masks, decimals=1)
    expected = slow_auroc(maps.ravel(), masks.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(torch.from_numpy(maps).float(), torch.from_numpy(masks)[:, None]) == (
        pytest.approx(expected, abs=1e-6)
    )


@pytest.mark.parametrize(
    "scores, labels, error, match",
    [
        ([0.1, 0.2], [1, 1], ValueError, "both classes"),
        ([0.1, 0.2], [0, 0], ValueError, "both classes"),
        ([0.1, 0.2, 0.3], [0, 1], ValueError, "one label per score"),
        ([0.1, float("nan")], [0, 1], ValueError, "NaN"),
        ([0.1, 0.2], [0, 2], ValueError, "only 0 and 1"),
        (None, [0, 1], TypeError, "None"),
        ("0.1", [0, 1], TypeError, "str"),
        ([[0.1, 0.2]], [[0, 1]], ValueError, "1-d"),
    ],
)
def test_image_auroc_bad_input(scores, labels, error, match):
    with pytest.raises(error, match=match):
        image_auroc(scores, labels)


def test_pixel_auroc_bad_input():
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(ValueError, match="both classes"):
        pixel_auroc(maps, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="does not match"):
        pixel_auroc(maps, np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        pixel_auroc(maps[0], np.zeros((4, 4)))
