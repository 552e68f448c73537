"""The float32 packed-key sort against the float64 argsort path and the slow curve."""

from __future__ import annotations

import numpy as np

from adpretrain_hf.metrics import pro_curve
from tests.metrics.slow_references import blob_masks, noisy_maps, slow_mvtec_curve


def test_float32_packed_sort_matches_float64_argsort_path():
    """float32 maps take the packed-key sort; negatives, -0.0 vs +0.0 and ties must behave."""
    rng = np.random.default_rng(13)
    masks = blob_masks(rng)
    maps = np.round(noisy_maps(rng, masks) * 4 - 2, 1).astype(np.float32)
    maps[1, :3, :3], maps[2, :3, :3] = -0.0, 0.0  # equal as floats: one threshold
    maps[3, 0, :4] = [np.finfo(np.float32).max, np.finfo(np.float32).min, 1e-45, -1e-45]
    fpr32, pro32, th32 = pro_curve(maps, masks)
    fpr64, pro64, th64 = pro_curve(maps.astype(np.float64), masks)
    np.testing.assert_array_equal(fpr32, fpr64)
    np.testing.assert_allclose(pro32, pro64, atol=1e-12)
    np.testing.assert_array_equal(th32.astype(np.float64), th64)
    slow_fpr, slow_pro = slow_mvtec_curve(maps.astype(np.float64), masks)
    np.testing.assert_allclose(fpr32, slow_fpr, atol=1e-12)
    np.testing.assert_allclose(pro32, slow_pro, atol=1e-12)
