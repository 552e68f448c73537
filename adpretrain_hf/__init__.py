"""adpretrain-hf: anomaly representation pretraining (ADPretrain) for the Hugging Face ecosystem.

``import adpretrain_hf`` registers the config, model, image processor, detector and the
``anomaly-features`` / ``anomaly-detection`` pipeline tasks with transformers, so
``AutoModel.from_pretrained(...)`` and ``pipeline(...)`` then work without ``trust_remote_code``::

    import adpretrain_hf
    from transformers import pipeline
    detect = pipeline("anomaly-detection", model="detector_dir")

Registration lives where the classes are defined (the last line of
:mod:`adpretrain_hf.modeling` imports ``registration``); this file only imports that module.
One exception keeps the console script instant: when the program is ``adpretrain`` (or
``python -m ...``), the package import stays light (no torch, no transformers) so ``--help``
and argument errors answer at once, and each command imports, and so registers, what it uses.

Public classes load on first access (PEP 562).
"""

from __future__ import annotations

import importlib
import os
import sys
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


#: ``sys.argv[0]`` names under which the import is the console script's (``python -m`` shows "-m"
#: while the target's parent packages import): those imports stay light, see the module docstring
CONSOLE_PROGRAMS = ("adpretrain", "adpretrain.exe", "-m")


if not (sys.argv and os.path.basename(sys.argv[0]) in CONSOLE_PROGRAMS):  # not the console script
    register()

__all__ = [*_LAZY_NAMES, "register", "__version__"]
