"""adpretrain-hf: anomaly representation pretraining (ADPretrain) for the Hugging Face ecosystem.

Importing this package is light (no torch, no transformers), so the ``adpretrain`` console
script answers ``--help`` and argument errors at once. The model side registers itself where
it is defined: importing :mod:`adpretrain_hf.modeling` (which any public model name below, the
detectors, the pipelines or :func:`register` do) registers the config, model, image processor,
detector and the ``anomaly-features`` / ``anomaly-detection`` pipeline tasks with transformers,
so ``AutoModel.from_pretrained(...)`` and ``pipeline(...)`` then work without ``trust_remote_code``::

    import adpretrain_hf.modeling  # or: from adpretrain_hf import ADPretrainModel
    from transformers import pipeline
    detect = pipeline("anomaly-detection", model="detector_dir")

Public classes load on first access (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it (loaded, and so registered, on first attribute access)
_LAZY_NAMES = {
    "ADPretrainConfig": "modeling",
    "ADPretrainModel": "modeling",
    "ADPretrainOutput": "modeling",
    "PRESETS": "modeling",
    "get_preset": "modeling",
}


def register() -> None:
    """Register the models, image processor and pipeline tasks with transformers (idempotent):
    the same as ``import adpretrain_hf.modeling``."""
    importlib.import_module(".modeling", __name__)


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'adpretrain_hf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))


__all__ = [*_LAZY_NAMES, "register", "__version__"]
