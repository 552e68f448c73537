"""The Detector interface's inputs (detectors/base.py): tensors, iterables of tensors and of
``{"pixel_values": ...}`` batches give one result, and bad input fails with a one-line error,
through every training-free method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adpretrain_hf.detectors import FeatureNorm, PaDiM, PatchCore
from tests.detectors.helpers import FakeExtractor, fit_patchcore, images


def test_iterables_and_dicts_equal_tensor_input(ext):
    train, test = images(6, seed=10), images(2, seed=11)
    a = PaDiM(ext, progress=False).fit(train).predict(test)
    batches = [{"pixel_values": train[:4]}, {"pixel_values": train[4:]}]
    b = PaDiM(ext, progress=False).fit(iter(batches)).predict([test[:1], test[1:]])
    for u, v in zip(a, b):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise_clear_errors(ext):
    x = images(4, seed=12)
    for cls in (PatchCore, PaDiM):
        with pytest.raises(RuntimeError, match="not fitted"):
            cls(ext, progress=False).predict(x)
        with pytest.raises(ValueError, match="no images"):
            cls(ext, progress=False).fit(torch.empty(0, 3, 32, 32))
        with pytest.raises(ValueError, match="no images"):
            cls(ext, progress=False).fit([])
        with pytest.raises(ValueError, match="3 channels|RGB"):
            cls(ext, progress=False).fit(torch.zeros(2, 1, 32, 32))
        with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
            cls(ext, progress=False).fit(torch.zeros(3, 32, 32))
        with pytest.raises(ValueError, match="out of range"):
            cls(ext, layer_positions=[5], progress=False).fit(x)
    with pytest.raises(ValueError, match="at least 2"):
        PaDiM(ext, progress=False).fit(x[:1])
    padim = PaDiM(ext, progress=False).fit(x)
    with pytest.raises(ValueError, match="fitted on"):
        padim.predict(images(1, seed=13, size=64))  # 16x16 grid vs the fitted 8x8
    patchcore = fit_patchcore(ext)
    patchcore.extractor = FakeExtractor(channels=(8, 12, 20))  # the last layer's width changed
    with pytest.raises(ValueError, match="fitted on"):
        patchcore.predict(x)
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCore(ext, coreset_ratio=0.0)
    with pytest.raises(ValueError, match="num_features"):
        PaDiM(ext, num_features=0)
    with pytest.raises(ValueError, match="exceeds"):
        PaDiM(ext, mode="concatenated", num_features=999, progress=False).fit(x)
    with pytest.raises(TypeError, match="list"):
        FeatureNorm(lambda p: torch.zeros(1, 2, 3, 3), progress=False).predict(x[:1])
