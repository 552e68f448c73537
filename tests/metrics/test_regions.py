"""label_regions against scikit-image's 8-connected labelling."""

from __future__ import annotations

import numpy as np

from adpretrain_hf.metrics import label_regions
from tests.metrics.slow_references import sk_regions


# --------------------------------------------------------------------------- regions
def test_label_regions_matches_skimage_8_connectivity():
    rng = np.random.default_rng(3)
    masks = rng.random((5, 12, 12)) < 0.3  # many diagonal contacts
    ids, sizes = label_regions(masks)
    expected = sk_regions(masks)
    assert sizes.size - 1 == len(expected)
    assert sorted(sizes[1:].tolist()) == sorted(int(r.sum()) for _, r in expected)
    assert int(sizes[0]) == int((~masks).sum())
    for i, region in expected:  # each skimage region is exactly one of ours
        assert np.unique(ids[i][region]).size == 1
        assert (ids[i] == ids[i][region][0]).sum() == region.sum()
