"""Downstream anomaly detectors on one feature-extractor interface.

Training-free: ``FeatureNorm``, ``PatchCore``, ``PaDiM``. Trained: ``CFLOW``, ``GLASS``,
``UniAD`` (registered only when their modules import: they are optional here, so this
package imports without them and ``build_detector`` says why one is missing).

    >>> detector = build_detector("patchcore", extractor, coreset_ratio=0.1)
    >>> maps, scores = detector.fit(train_images).predict(test_images)

Layers: every detector takes ``layers=`` (indices into the extractor's list, negative from
the end); without it each uses its published default, its class's ``default_last_layers``
(the last k layers; ``None`` = all), collected in ``DEFAULT_LAST_LAYERS``:

============  ===========  =====================================================
detector      layers       source
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

import importlib
from typing import Any, Optional

from .base import Detector, FeatureExtractor, iter_image_batches
from .featurenorm import FeatureMapDetector, FeatureNorm
from .padim import PaDiM
from .patchcore import PatchCore

__all__ = [
    "DEFAULT_LAST_LAYERS",
    "DETECTORS",
    "Detector",
    "FeatureExtractor",
    "FeatureMapDetector",
    "FeatureNorm",
    "PaDiM",
    "PatchCore",
    "build_detector",
    "iter_image_batches",
]

#: registry name -> detector class
DETECTORS: dict[str, type[Detector]] = {"featurenorm": FeatureNorm, "patchcore": PatchCore, "padim": PaDiM}

# registry name -> (module, accepted class names) of detectors that may be absent.
_OPTIONAL = {"cflow": (".cflow", ("CFLOW", "CFlow")), "glass": (".glass", ("GLASS", "Glass")), "uniad": (".uniad", ("UniAD",))}
_UNAVAILABLE: dict[str, str] = {}  # registry name -> why it is not registered


def _load_optional(module_name: str, class_names: tuple[str, ...]) -> type[Detector]:
    module = importlib.import_module(module_name, __name__)
    for class_name in class_names:
        if isinstance(getattr(module, class_name, None), type):
            return getattr(module, class_name)
    raise ImportError(f"{module.__name__} defines none of {', '.join(class_names)}")


for _name, (_module, _classes) in _OPTIONAL.items():
    try:
        _detector_cls = _load_optional(_module, _classes)
    except ImportError as _err:  # the module, a dependency of it, or its class is not there (yet)
        _UNAVAILABLE[_name] = f"{type(_err).__name__}: {_err}"
    else:
        DETECTORS[_name] = _detector_cls
        for _alias in {_classes[0], _detector_cls.__name__}:  # e.g. CFLOW, and the class's own name
            globals()[_alias] = _detector_cls
            __all__.append(_alias)


#: registry name -> default layer choice (last k layers; None = all), read from each class
DEFAULT_LAST_LAYERS: dict[str, Optional[int]] = {name: cls.default_last_layers for name, cls in DETECTORS.items()}


def build_detector(name: str, extractor: FeatureExtractor, **kwargs: Any) -> Detector:
    """Instantiate a registered detector by name (case-insensitive), e.g. ``"padim"``.

    ``kwargs`` go to the detector's constructor (``batch_size``, ``progress``, method options).
    Raises ``ValueError`` for an unknown name (listing the known ones) and ``ImportError``
    for a known detector whose module could not be imported.
    """
    if not isinstance(name, str):
        raise TypeError(f"detector name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key in DETECTORS:
        return DETECTORS[key](extractor, **kwargs)
    known = ", ".join(sorted(DETECTORS))
    if key in _UNAVAILABLE:
        raise ImportError(f"detector {name!r} is not available here ({_UNAVAILABLE[key]}); available: {known}")
    raise ValueError(f"unknown detector {name!r}: choose one of {known}")
