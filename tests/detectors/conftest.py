"""Fixtures of the detector tests: the fixed random conv stack of tests/detectors/helpers.py."""

from __future__ import annotations

import pytest

from tests.detectors.helpers import FakeExtractor


@pytest.fixture(scope="module")
def ext() -> FakeExtractor:
    return FakeExtractor()
