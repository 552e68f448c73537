"""Synthetic defects: each mask marks exactly the pixels its defect changed, on the product only."""

from __future__ import annotations

import numpy as np
import pytest

from adpretrain_hf.data import DEFECT_KINDS, SYNTHETIC_CATEGORIES, render_views
from adpretrain_hf.data.synthetic_scenes import SCENES

SMALL = 48  # image side for tests: fast, still large enough for every defect


@pytest.mark.parametrize("category", SYNTHETIC_CATEGORIES)
@pytest.mark.parametrize("defect", DEFECT_KINDS)
def test_mask_is_exactly_where_the_defect_changed_pixels(category, defect):
    for seed in range(2):
        view = render_views(category, defect, seed=[seed, 5], image_size=SMALL)[0]
        assert view.image.shape == (SMALL, SMALL, 3) and view.image.dtype == np.uint8
        changed = np.any(view.image != view.clean, axis=-1)
        assert view.mask.dtype == bool and view.mask.sum() >= 6
        assert not np.any(changed & ~view.mask)  # nothing changed outside the mask
        assert changed[view.mask].mean() > 0.9  # and the masked pixels did change


def test_defects_stay_on_the_object():
    for seed in range(3):
        scene = SCENES["washer"](np.random.default_rng([seed, 0]), SMALL, True)
        view = render_views("washer", "stain", seed=[seed, 0], image_size=SMALL)[0]
        # render_views draws the scene first from the same generator: C1 is that product plus sensor noise
        assert np.abs(view.clean - np.clip(scene.image, 0, 255)).mean() < 3.0
        assert not np.any(view.mask & ~scene.foreground)
