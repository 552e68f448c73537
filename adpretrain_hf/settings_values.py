"""Text -> typed setting values, and name checks with a suggestion: the rules every settings
parser shares (``--set key=value``, ``--config file.yaml``, the flags of ``adpretrain evaluate``).

Why one place: a value typed on the command line, read from YAML or passed as ``--set`` must
become the same Python value for the same field, and a misspelt name must fail the same way
(naming the closest known name) wherever it was typed. Light on purpose (no torch, no
transformers): ``adpretrain --help`` may import it.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

NULL_WORDS = ("null", "none", "~")
"""Text that means ``None`` for an ``Optional`` field (``--set resume=null``)."""
TRUE_WORDS = ("true", "yes", "y", "on", "1")
FALSE_WORDS = ("false", "no", "n", "off", "0")
SEQUENCE_ORIGINS = (list, tuple, collections.abc.Sequence)


def suggest(name: str, known: Iterable[str]) -> str:
    """``"did you mean 'x'?"`` for the closest known name, else the list of known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"


def check_known(names: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming the first unknown name and the closest known one."""
    known = list(known)
    for name in names:
        if name not in known:
            raise ValueError(f"{name!r} is not {what}: {suggest(name, known)}")


def strip_optional(hint: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``; any other hint -> ``(hint, False)``."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def is_plain(hint: Any) -> bool:
    """A hint ``HfArgumentParser`` reads unaided: str, int, float or bool (optionally ``Optional``)."""
    inner, _ = strip_optional(hint)
    return inner in (str, int, float, bool)


def _bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"expected {'an int' if kind is int else 'a float'}, got {text!r}") from None


def _load_yaml(text: str, example: str) -> Any:
    """``yaml.safe_load`` with a one-line ValueError (PyYAML's own message spans several lines)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = " ".join(str(getattr(err, "problem", None) or "syntax error").split())
        raise ValueError(f"{text!r} is not valid YAML ({problem}): write it like {example}") from None


def _items(text: str) -> list[Any]:
    """``"[7, 9]"`` (YAML / JSON) or ``"7,9"`` (the comma form users type) -> raw items."""
    stripped = text.strip()
    if stripped.startswith("["):
        loaded = _load_yaml(stripped, "[1, 2]")
        if not isinstance(loaded, list):
            raise ValueError(f"expected a list such as [1, 2] or 1,2, got {text!r}")
        return loaded
    return [item.strip() for item in stripped.split(",") if item.strip()]


def typed_value(text: Any, hint: Any) -> Any:
    """Convert ``text`` (a command-line or YAML string) to a value of the type ``hint``.

    Supports the hints of the settings dataclasses and ``ADPretrainConfig``: str, int, float,
    bool, ``Optional[...]`` (``null``/``none`` -> ``None``), sequences (``[1, 2]`` or ``1,2``,
    items converted to the item type), dicts (YAML / JSON mappings) and ``Any`` (YAML scalar).
    Non-string input is returned as it is (YAML already typed it). Raises ``ValueError``.
    """
    if not isinstance(text, str):
        return text
    inner, optional = strip_optional(hint)
    if optional and text.strip().lower() in NULL_WORDS:
        return None
    origin = typing.get_origin(inner) or inner
    if inner is str:
        return text
    if inner is bool:
        return _bool(text)
    if inner in (int, float):
        return _number(text, inner)
    if origin in SEQUENCE_ORIGINS:
        args = typing.get_args(inner)
        item_hint = args[0] if args else Any
        items = [typed_value(item, item_hint) for item in _items(text)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, collections.abc.Mapping):
        loaded = _load_yaml(text, "{key: value}") if text.strip() else {}
        if not isinstance(loaded, dict):
            raise ValueError(f"expected a mapping such as {{key: value}}, got {text!r}")
        return loaded
    if inner is Any:
        return _load_yaml(text, "a YAML scalar such as 3, 0.5 or text")
    raise ValueError(f"cannot read a value of type {inner!r} from text")


def dataclass_hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint of the dataclass ``cls`` (init fields only)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def read_settings_file(path: str | Path, cls: type) -> dict[str, Any]:
    """A YAML or JSON file of ``field: value`` lines for the dataclass ``cls``, names checked and
    string values typed (YAML 1.1 reads ``1e-4`` as text). Raises ``ValueError`` naming the key."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"settings file {path} does not exist: pass a .yaml or .json file")
    text = path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        problem = " ".join(str(getattr(err, "problem", None) or getattr(err, "msg", None) or "syntax error").split())
        line = getattr(getattr(err, "problem_mark", None), "line", getattr(err, "lineno", 0) - 1) + 1
        raise ValueError(f"{path} is not valid {path.suffix.lstrip('.').upper() or 'YAML'} ({problem}, line {line}): "
                         "fix its syntax") from None
    values = values or {}
    if not isinstance(values, Mapping):
        raise ValueError(f"{path} must hold a mapping of setting: value lines")
    hints = dataclass_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown keys in {path}: {unknown} ({suggest(unknown[0], hints)})")
    typed = {}
    for key, value in values.items():
        try:
            typed[key] = typed_value(value, hints[key]) if isinstance(value, str) else value
        except ValueError as err:
            raise ValueError(f"{key} in {path}: {err}") from None
    return typed
