"""The detector registry of detectors/__init__.py: ``DETECTORS`` and ``build_detector``."""

from __future__ import annotations

import pytest

from adpretrain_hf.detectors import DETECTORS, PatchCore, build_detector


def test_registry_and_build_detector(ext):
    assert {"featurenorm", "patchcore", "padim"} <= set(DETECTORS)
    det = build_detector("PatchCore", ext, coreset_ratio=0.5, progress=False)
    assert isinstance(det, PatchCore) and det.coreset_ratio == 0.5
    with pytest.raises(ValueError, match="featurenorm.*padim.*patchcore"):
        build_detector("knn", ext)
