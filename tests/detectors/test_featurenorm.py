"""FeatureNorm's maps against an explicit norm-per-patch pipeline (scipy Gaussian, plain loops)."""

from __future__ import annotations

import math

import numpy as np

from adpretrain_hf.detectors import FeatureNorm
from tests.detectors.helpers import images, ref_maps


def test_featurenorm_matches_explicit_pipeline(ext):
    x = images(3, seed=1)
    det = FeatureNorm(ext, progress=False)
    assert det.fit(None) is det  # nothing to learn; predict also works without fit
    maps, scores = det.predict(x)
    feats = [f.double().numpy() for f in ext(x)]
    grids = []
    for f in feats:
        b, c, h, w = f.shape
        g = np.zeros((b, h, w))
        for n in range(b):
            for i in range(h):
                for j in range(w):
                    g[n, i, j] = math.sqrt(sum(f[n, k, i, j] ** 2 for k in range(c)))
        grids.append(g)
    ref, ref_scores = ref_maps(grids, (32, 32))
    assert maps.shape == (3, 32, 32) and scores.shape == (3,)
    np.testing.assert_allclose(maps.numpy(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-5, atol=1e-5)
