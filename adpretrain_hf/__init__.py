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
    """True when a script (``__main__``: the console script, ``python -m adpretrain_hf.cli``,
    ``python -c``) imports the CLI: the outermost import in progress targets it.

    Reads the import machinery's frames: ``_find_and_load(name)`` for ``import``/``from``
    statements, ``_get_module_details(mod_name)`` for ``python -m``. Library code (tests, user
    modules) importing the CLI registers eagerly, as does any doubt.
    """
    frame = sys._getframe(1)
    target, importer = None, None
    while frame is not None:
        if frame.f_code.co_name in ("_find_and_load", "_get_module_details", "_run_module_as_main"):
            name = frame.f_locals.get("name", frame.f_locals.get("mod_name"))
            if isinstance(name, str):
                target, importer = name, frame.f_back
        frame = frame.f_back
    if target is None or not target.startswith(_LIGHT_IMPORT_TARGETS):
        return False
    while importer is not None and importer.f_code.co_filename.startswith("<frozen"):
        importer = importer.f_back  # skip importlib's own frames
    return importer is None or importer.f_globals.get("__name__") in ("__main__", "runpy")


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
