"""Command-line parsers derived from settings dataclasses, on plain ``argparse``.

Why: a setting is declared once, as a dataclass field with ``metadata={"help": ...}`` (and
``"choices"`` / ``"aliases"`` / ``"metavar"`` where it has them); its flag, type, default and help
text follow. Light on purpose (no torch, no transformers: ``adpretrain evaluate --help`` answers
at once). The flag rules are those of ``transformers.HfArgumentParser``, plus what our settings need:

- ``--field_name`` and ``--field-name``; a bool is ``--flag`` / ``--flag true|false``, and a bool
  that defaults to True also gets ``--no-flag``;
- every value is read with :func:`~adpretrain_hf.settings_values.typed_value`, so sequences take
  ``--methods a,b`` or ``--methods [a, b]``, dicts a YAML mapping, ``Optional`` fields ``none``;
- ``--config FILE`` (YAML or JSON): its values become the defaults, so flags typed on the
  command line win over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Optional, Sequence

from .settings_values import dataclass_hints, read_settings_file, strip_optional, typed_value

CONFIG_FLAG = "--config"


def _converter(hint: Any, name: str):
    """argparse ``type=`` for a field: text -> value, errors as argparse messages naming the flag."""

    def convert(text: str) -> Any:
        try:
            return typed_value(text, hint)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{name}: {err}") from None

    convert.__name__ = name  # argparse names the type in "invalid <name> value"
    return convert


def _default_text(value: Any) -> Any:
    """Sequence defaults as the comma form users type (argparse converts string defaults with ``type``)."""
    if isinstance(value, (list, tuple)) and all(isinstance(item, (str, int, float)) for item in value):
        return ",".join(str(item) for item in value)
    return value


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per init field of the dataclass ``cls`` (see the module docstring for the rules)."""
    hints = dataclass_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        kwargs = dict(field.metadata)
        aliases = kwargs.pop("aliases", [])
        aliases = [aliases] if isinstance(aliases, str) else list(aliases)
        options = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
        if field.default is not dataclasses.MISSING:
            kwargs["default"] = _default_text(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            kwargs["default"] = _default_text(field.default_factory())
        else:
            kwargs["required"] = True
        hint = hints[field.name]
        is_bool = strip_optional(hint)[0] is bool
        if is_bool:
            kwargs.update(nargs="?", const=True, metavar=kwargs.get("metavar", "true|false"))
        parser.add_argument(*options, *aliases, type=_converter(hint, field.name), **kwargs)
        if is_bool and field.default is True:
            flag = field.name.replace("_", "-")
            parser.add_argument(f"--no_{field.name}", f"--no-{flag}", action="store_false", dest=field.name,
                                default=argparse.SUPPRESS, help=f"turn {flag} off")


class SettingsParser(argparse.ArgumentParser):
    """An ``argparse`` parser with one flag per field of settings dataclasses, plus ``--config FILE`` (flags override it).

    Args:
        dataclass_types: the settings dataclass, or a list of them.
        config_help: help of ``--config``; ``None`` adds no ``--config`` flag.
        **kwargs: passed to ``argparse.ArgumentParser`` (``prog``, ``description``, ...).

    With no dataclass it is a plain ``ArgumentParser`` (the ``adpretrain`` subcommands are built with
    this class, and a settings command calls :meth:`add_settings` in its ``add_arguments``).
    """

    def __init__(self, dataclass_types: Any = None, config_help: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataclass_types: list[type] = []
        self.config_help: Optional[str] = None
        if dataclass_types is not None:
            self.add_settings(dataclass_types, config_help)

    def add_settings(self, dataclass_types: Any, config_help: Optional[str] = None) -> None:
        """Add a flag per field of ``dataclass_types`` (one dataclass or a list), and ``--config`` with ``config_help``."""
        types = list(dataclass_types) if isinstance(dataclass_types, (list, tuple)) else [dataclass_types]
        if config_help is not None and len(self.dataclass_types) + len(types) != 1:
            raise ValueError("--config reads the settings of one dataclass: pass exactly one dataclass type")
        for cls in types:
            add_dataclass_arguments(self, cls)
        self.dataclass_types.extend(types)
        if config_help is not None:
            self.config_help = config_help
            self.add_argument(CONFIG_FLAG, default=None, metavar="FILE.yaml|json", help=config_help)

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None):
        """Read ``--config FILE`` first and make its values the defaults; then parse as usual."""
        if self.config_help is not None:
            self._apply_settings_file(args)
        return super().parse_known_args(args, namespace)

    def _apply_settings_file(self, args: Optional[Sequence[str]]) -> None:
        import sys

        probe = argparse.ArgumentParser(add_help=False, allow_abbrev=self.allow_abbrev)  # reads --config as this parser will
        probe.add_argument(CONFIG_FLAG, default=None)
        known, _ = probe.parse_known_args(list(sys.argv[1:] if args is None else args))
        if known.config is None:
            return
        try:
            values = read_settings_file(known.config, self.dataclass_types[0])
        except ValueError as err:
            self.error(str(err))  # exits 2 with the usage line, as for any bad flag
        self.set_defaults(**values)
        for action in self._actions:
            if action.dest in values:
                action.required = False  # the file gave it


def dataclass_from_namespace(cls: type, namespace: argparse.Namespace, **values: Any) -> Any:
    """The dataclass ``cls`` built from the parsed fields in ``namespace`` (``values`` win)."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    return cls(**{**{name: getattr(namespace, name) for name in names if hasattr(namespace, name)}, **values})
