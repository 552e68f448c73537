"""Fixtures of the detector tests: ``ext``, the fixed random conv stack of tests/detectors/helpers.py;
``trained_ext``, the trained detectors' two-layer extractor; ``fitted`` / ``predictions``, the trained detectors
fitted once per session (tests/detectors/trained_helpers.py)."""

from __future__ import annotations

import pytest
import torch

from adpretrain_hf.detectors.trained import TrainedDetector
from tests.detectors.helpers import FakeExtractor
from tests.detectors import trained_helpers
from tests.detectors.trained_helpers import FITTED, PREDICTIONS, TRAINED_EXTRACTOR


@pytest.fixture(scope="module")
def ext() -> FakeExtractor:
    return FakeExtractor()


@pytest.fixture(scope="module")
def trained_ext() -> trained_helpers.FakeExtractor:
    """The extractor the trained detectors are fitted with (tests/detectors/trained_helpers.py)."""
    return TRAINED_EXTRACTOR


@pytest.fixture(scope="module")
def fitted() -> dict[type, TrainedDetector]:
    """Each method fitted once per session on the normal textures (tests/detectors/trained_helpers.py)."""
    return FITTED


@pytest.fixture(scope="module")
def predictions() -> dict[type, tuple[torch.Tensor, torch.Tensor]]:
    return PREDICTIONS
