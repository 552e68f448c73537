"""Mask -> patch labels, checked against an explicit loop over patches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adpretrain_hf.data import PATCH_ANOMALY_FRACTION, patch_fractions, patch_labels


def loop_labels(masks: np.ndarray, grid: tuple[int, int], threshold: float) -> np.ndarray:
    """Reference: patch (i, j) covers rows floor(i*H/h) .. ceil((i+1)*H/h) (same for columns)."""
    b, height, width = masks.shape
    h, w = grid
    out = np.zeros((b, h * w), bool)
    for n in range(b):
        for i in range(h):
            r0, r1 = math.floor(i * height / h), math.ceil((i + 1) * height / h)
            for j in range(w):
                c0, c1 = math.floor(j * width / w), math.ceil((j + 1) * width / w)
                out[n, i * w + j] = masks[n, r0:r1, c0:c1].mean() > threshold
    return out


def random_masks(shape, seed=0, density=0.15) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = rng.random(shape) < density
    masks[0, : shape[1] // 2, : shape[2] // 3] = True  # one solid region so some patches are full
    return masks


def test_default_is_the_release_rule():
    assert PATCH_ANOMALY_FRACTION == 32 / 256


@pytest.mark.parametrize("threshold", [PATCH_ANOMALY_FRACTION, 0.0, 0.5])
def test_divisible_grid_matches_loop(threshold):
    masks = random_masks((3, 64, 48))
    got = patch_labels(torch.from_numpy(masks), (4, 3), threshold=threshold)
    assert got.dtype == torch.bool and got.shape == (3, 12)
    np.testing.assert_array_equal(got.numpy(), loop_labels(masks.astype(float), (4, 3), threshold))


def test_non_divisible_grid_matches_loop():
    masks = random_masks((2, 30, 22), seed=1, density=0.2)
    got = patch_labels(masks, (4, 3))  # numpy input, 30/4 and 22/3 not integers
    np.testing.assert_array_equal(got.numpy(), loop_labels(masks.astype(float), (4, 3), PATCH_ANOMALY_FRACTION))
    fractions = patch_fractions(masks, (4, 3)).numpy()
    assert fractions.shape == (2, 12) and fractions.min() >= 0 and fractions.max() <= 1


def test_more_than_32_of_256_pixels():
    # image 0 stays empty; image 1 fills pixels of its top-right 16x16 patch (row-major index 1 of 2x2)
    masks = torch.zeros(2, 32, 32)
    rows, cols = np.unravel_index(np.arange(32), (16, 16))
    masks[1, rows, cols + 16] = 1  # exactly 32 pixels: not more than 32
    assert patch_labels(masks, (2, 2)).tolist() == [[False] * 4, [False] * 4]
    masks[1, 15, 31] = 1  # the 33rd pixel
    assert patch_labels(masks, (2, 2)).tolist() == [[False] * 4, [False, True, False, False]]


def test_input_forms_agree():
    masks = random_masks((2, 16, 16), seed=3)
    expected = patch_labels(torch.from_numpy(masks), 4)
    assert torch.equal(patch_labels(torch.from_numpy(masks)[:, None], (4, 4)), expected)
    assert torch.equal(patch_labels(torch.from_numpy(masks.astype(np.uint8)), (4, 4)), expected)
    assert torch.equal(patch_labels(torch.from_numpy(masks.astype(np.float64)), (4, 4)), expected)


@pytest.mark.parametrize(
    "masks, grid, threshold, error, message",
    [
        (torch.full((1, 8, 8), 255.0), (2, 2), 0.1, ValueError, r"values in \{0, 1\}.*mask > 0"),
        (torch.zeros(8, 8), (2, 2), 0.1, ValueError, r"\[B, H, W\] or \[B, 1, H, W\]"),
        (torch.zeros(1, 3, 8, 8), (2, 2), 0.1, ValueError, r"\[B, H, W\]"),
        (torch.zeros(1, 8, 8), (2, 0), 0.1, ValueError, "positive"),
        (torch.zeros(1, 8, 8), (2.0, 2), 0.1, TypeError, "two integers"),
        (torch.zeros(1, 8, 8), (2, 2), 1.0, ValueError, r"threshold.*\[0, 1\)"),
        ([[[0, 1]]], (1, 1), 0.1, TypeError, "torch.Tensor or numpy"),
    ],
)
def test_errors(masks, grid, threshold, error, message):
    with pytest.raises(error, match=message):
        patch_labels(masks, grid, threshold)
