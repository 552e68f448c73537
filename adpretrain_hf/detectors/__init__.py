"""Downstream anomaly detectors on one feature-extractor interface.

Training-free: ``FeatureNorm``, ``PatchCore``, ``PaDiM``. Trained: ``CFLOW``, ``GLASS``,
``UniAD`` (plain torch networks, fitted on normal features).

    >>> detector = build_detector("patchcore", extractor, coreset_ratio=0.1)
    >>> maps, scores = detector.fit(train_images).predict(test_images)

A detector fits its ``module`` (an ``nn.Module`` whose fitted state lives in buffers, see
``modeling/detector_module_adpretrain.py``); ``detector.module(features, image_size)`` is the one
scoring path, shared by ``predict``, the deployed folder and the ONNX export. ``DETECTORS`` is
the one list of methods: every other list of names derives from it (``METHODS``).

Layers: every detector takes ``layer_positions=`` (0-based positions in the extractor's list
of maps, negative from the end); without it each uses
its published default, its class's ``default_last_positions`` (the last k positions; ``None`` =
all), collected in ``DEFAULT_LAST_POSITIONS``:

============  ===========  =====================================================
detector      positions    source
============  ===========  =====================================================
featurenorm   all          ADPretrain (norm map per layer, averaged)
patchcore     last 3       PatchCore / ADPretrain release
padim         all          PaDiM / ADPretrain release (one Gaussian per layer)
cflow         last 3       CFLOW-AD / ADPretrain release
glass         last 2       GLASS / ADPretrain release
uniad         all          UniAD (every tapped stage, resized to one grid)
============  ===========  =====================================================
"""

from __future__ import annotations

from typing import Any, Optional

from ..modeling.detector_module_adpretrain import check_options, closest_name_hint, constructor_options

from .base import Detector, FeatureExtractor, FeatureMapDetector, iter_image_batches
from .cflow import CFLOW
from .featurenorm import FeatureNorm
from .glass import GLASS
from .padim import PaDiM
from .patchcore import PatchCore
from .trained import TrainedDetector
from .uniad import UniAD

__all__ = [
    "CFLOW",
    "DEFAULT_LAST_POSITIONS",
    "DETECTORS",
    "GLASS",
    "METHODS",
    "TRAINED_METHODS",
    "Detector",
    "FeatureExtractor",
    "FeatureMapDetector",
    "FeatureNorm",
    "PaDiM",
    "PatchCore",
    "UniAD",
    "build_detector",
    "detector_options",
    "iter_image_batches",
]

#: registry name -> detector class
DETECTORS: dict[str, type[Detector]] = {
    "featurenorm": FeatureNorm, "patchcore": PatchCore, "padim": PaDiM, "cflow": CFLOW, "glass": GLASS, "uniad": UniAD,
}

#: every method name, in the registry's order (CLI choices, report rows, evaluation grids)
METHODS: tuple[str, ...] = tuple(DETECTORS)
#: the methods that train a network (the rest only store statistics)
TRAINED_METHODS: tuple[str, ...] = tuple(name for name, cls in DETECTORS.items() if issubclass(cls, TrainedDetector))

#: registry name -> default choice of positions (the last k; None = all), read from each class
DEFAULT_LAST_POSITIONS: dict[str, Optional[int]] = {name: cls.default_last_positions for name, cls in DETECTORS.items()}


def build_detector(name: str, extractor: FeatureExtractor, **kwargs: Any) -> Detector:
    """Instantiate a registered detector by name (case-insensitive), e.g. ``"padim"``.

    ``kwargs`` go to the detector's constructor (``batch_size``, ``progress``, method options).
    Raises ``ValueError`` for an unknown name (listing the known ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"detector name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in DETECTORS:
        known = ", ".join(sorted(DETECTORS))
        raise ValueError(f"unknown detector {name!r}{closest_name_hint(key, DETECTORS)}: choose one of {known}")
    check_options(key, kwargs, detector_options(key))
    return DETECTORS[key](extractor, **kwargs)


def detector_options(name: str) -> list[str]:
    """The keyword options a registered detector's constructor accepts (its class and its bases)."""
    return constructor_options(DETECTORS[name], skip=("self", "extractor"))
