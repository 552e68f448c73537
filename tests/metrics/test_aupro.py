"""aupro / pro_curve (MVTec variant) against a slow per-threshold, per-region loop; their input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adpretrain_hf.metrics import AUPRO_FPR_LIMIT, aupro, pro_curve
from tests.metrics.slow_references import TOL, blob_masks, noisy_maps, slow_aupro, slow_mvtec_curve


# --------------------------------------------------------------------------- AUPRO (mvtec)
@pytest.mark.parametrize("seed, decimals", [(0, None), (1, None), (2, 1), (3, 2)])
def test_aupro_matches_slow_reference_on_random_blobs(seed, decimals):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng)
    maps = noisy_maps(rng, masks, decimals=decimals)
    for limit in (0.05, AUPRO_FPR_LIMIT, 1.0):
        assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(
            slow_aupro(maps, masks, limit), abs=TOL
        )


def test_pro_curve_equals_slow_curve_point_by_point():
    rng = np.random.default_rng(4)
    masks = blob_masks(rng, n=4, size=12)
    maps = noisy_maps(rng, masks, decimals=1)
    fpr, pro, thresholds = pro_curve(maps, masks)
    slow_fpr, slow_pro = slow_mvtec_curve(maps, masks)
    np.testing.assert_allclose(fpr, slow_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, slow_pro, atol=1e-12)
    np.testing.assert_array_equal(thresholds, np.unique(maps)[::-1])


def test_aupro_perfect_and_inverted_maps():
    masks = blob_masks(np.random.default_rng(5))
    perfect = masks.astype(np.float64)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=TOL)
    assert slow_aupro(perfect, masks) == pytest.approx(1.0, abs=TOL)
    inverted = 1.0 - perfect
    assert aupro(inverted, masks) == pytest.approx(slow_aupro(inverted, masks), abs=TOL)
    assert aupro(inverted, masks) == pytest.approx(0.0, abs=TOL)


def test_aupro_single_pixel_defect():
    rng = np.random.default_rng(6)
    masks = np.zeros((2, 9, 9), dtype=np.uint8)
    masks[1, 4, 7] = 1
    maps = rng.random(masks.shape)
    assert aupro(maps, masks) == pytest.approx(slow_aupro(maps, masks), abs=TOL)
    maps[1, 4, 7] = 2.0  # found first: PRO jumps to 1 at FPR 0
    assert aupro(maps, masks) == pytest.approx(1.0, abs=TOL)


def test_aupro_two_regions_of_different_sizes_weigh_equally():
    masks = np.zeros((1, 10, 10), dtype=np.uint8)
    masks[0, 1:4, 1:5] = 1  # 12 pixels
    masks[0, 8, 8] = 1  # 1 pixel
    rng = np.random.default_rng(7)
    maps = rng.random(masks.shape) * 0.5
    maps[0, 1:4, 1:5] += 1.0  # big region found first
    got = aupro(maps, masks)
    assert got == pytest.approx(slow_aupro(maps, masks), abs=TOL)
    assert 0.4 < got < 0.9  # half of the regions found at FPR 0, not 12/13 of the pixels


def test_aupro_uses_8_connectivity():
    """Diagonal neighbours form one region; 4-connectivity would give another number."""
    masks = np.zeros((1, 6, 6), dtype=np.uint8)
    masks[0, 1, 1] = masks[0, 2, 2] = masks[0, 4, 4] = 1
    maps = np.random.default_rng(8).random(masks.shape)
    maps[0, 1, 1], maps[0, 2, 2], maps[0, 4, 4] = 5.0, 0.0, 0.5
    got = aupro(maps, masks)
    assert got == pytest.approx(slow_aupro(maps, masks, connectivity=2), abs=TOL)
    assert abs(got - slow_aupro(maps, masks, connectivity=1)) > 0.01


def test_aupro_images_without_defects_only_add_negatives():
    rng = np.random.default_rng(9)
    defective = blob_masks(rng, n=2, defect_prob=1.0)
    masks = np.concatenate([defective, np.zeros((3, 16, 16), np.uint8)])
    maps = noisy_maps(rng, masks)
    assert aupro(maps, masks) == pytest.approx(slow_aupro(maps, masks), abs=TOL)
    # The defect-free images change the curve only through the FPR axis.
    fpr_all, pro_all, _ = pro_curve(maps, masks)
    assert pro_all[-1] == pytest.approx(1.0) and fpr_all[-1] == 1.0


def test_aupro_input_forms_agree():
    rng = np.random.default_rng(10)
    masks = blob_masks(rng)
    maps = noisy_maps(rng, masks).astype(np.float32)
    expected = aupro(maps, masks)
    assert aupro(torch.from_numpy(maps), torch.from_numpy(masks)[:, None].bool()) == expected
    assert aupro(maps[:, None], masks.astype(np.float32)) == expected
    assert aupro(maps, masks) == pytest.approx(slow_aupro(maps.astype(np.float64), masks), abs=TOL)


@pytest.mark.parametrize(
    "maps, masks, kwargs, error, match",
    [
        (np.ones((2, 4, 4)), np.zeros((2, 4, 4)), {}, ValueError, "at least one anomalous pixel"),
        (np.ones((1, 2, 2)), np.ones((1, 2, 2)), {}, ValueError, "at least one normal pixel"),
        (np.full((1, 2, 2), np.nan), np.eye(2)[None], {}, ValueError, "NaN"),
        (np.ones((1, 2, 2)), np.eye(2)[None] * 0.5, {}, ValueError, "only 0 and 1"),
        (np.ones((1, 2, 2)), np.eye(2)[None], {"variant": "anomalib"}, ValueError, "variant"),
        (np.ones((1, 2, 2)), np.eye(2)[None], {"fpr_limit": 0.0}, ValueError, "outside"),
        (np.ones((1, 2, 2)), np.eye(2)[None], {"fpr_limit": "0.3"}, TypeError, "number"),
        (np.ones((1, 2, 2)), np.ones((1, 2, 2, 2)), {}, ValueError, r"\[N, 1, H, W\]"),
    ],
)
def test_aupro_bad_input(maps, masks, kwargs, error, match):
    with pytest.raises(error, match=match):
        aupro(maps, masks, **kwargs)
