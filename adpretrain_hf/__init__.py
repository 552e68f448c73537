"""adpretrain-hf: anomaly representation pretraining (ADPretrain) for the Hugging Face ecosystem.

Importing the package registers the model with the Auto classes (``AutoConfig``,
``AutoModel``, ``AutoImageProcessor``) and the ``anomaly-features`` / ``anomaly-detection``
pipeline tasks, so ``AutoModel.from_pretrained(...)`` and ``pipeline(...)`` work without
``trust_remote_code``.

Why the laziness: registering needs transformers and torch (~9 s to import on a small
machine). The ``adpretrain`` console script imports this package only to reach
``adpretrain_hf.cli``; for that import alone the registration is deferred (``cli.main`` calls
:func:`register` before running a command), so ``adpretrain --help`` imports neither. Every
other import registers at once, as before. Public classes load on first access (PEP 562).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it (loaded on first attribute access)
_LAZY_NAMES = {
    "ADPretrainConfig": "modeling",
    "ADPretrainModel": "modeling",
    "ADPretrainOutput": "modeling",
    "PRESETS": "modeling",
    "get_preset": "modeling",
}
# modules whose import alone must stay light: the console script and its subcommands' parsers
_LIGHT_IMPORT_TARGETS = ("adpretrain_hf.cli", "adpretrain_hf.commands")
_registered = False


def register() -> None:
    """Register the config, model, image processor and pipeline tasks with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModel

    from .modeling import ADPretrainConfig, ADPretrainModel

    AutoConfig.register(ADPretrainConfig.model_type, ADPretrainConfig, exist_ok=True)
    AutoModel.register(ADPretrainConfig, ADPretrainModel, exist_ok=True)
    from . import registration  # noqa: F401  (image processor, detector model, pipeline tasks)

    _registered = True


def _imported_for_a_light_module() -> bool:
    """True when the outermost import in progress targets the CLI (or ``python -m adpretrain_hf.cli``).

    Reads the import machinery's frames: ``_find_and_load(name)`` for ``import``/``from``
    statements, ``_get_module_details(mod_name)`` for ``python -m``. Any doubt -> False
    (register eagerly, the safe default).
    """
    frame = sys._getframe(1)
    targets = []
    while frame is not None:
        if frame.f_code.co_name in ("_find_and_load", "_get_module_details", "_run_module_as_main"):
            name = frame.f_locals.get("name", frame.f_locals.get("mod_name"))
            if isinstance(name, str):
                targets.append(name)
        frame = frame.f_back
    return bool(targets) and targets[-1].startswith(_LIGHT_IMPORT_TARGETS)


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        register()
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'adpretrain_hf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))


if not _imported_for_a_light_module():
    register()

__all__ = [*_LAZY_NAMES, "register", "__version__"]
