"""Command-line parsers derived from settings dataclasses (``transformers.HfArgumentParser``).

Why: a setting is declared once, as a dataclass field with ``metadata={"help": ...}`` (and
``"choices"`` / ``"aliases"`` where it has them); its flag, type, default and help text follow.
On top of ``HfArgumentParser`` this adds what our settings need:

- sequence, dict and ``Any`` fields read with :func:`~adpretrain_hf.settings_values.typed_value`
  (``--methods a,b`` or ``--methods [a, b]``; ``--model '{k: v}'``), where ``HfArgumentParser``
  would take space-separated lists only and cannot read dicts;
- ``--config FILE`` (YAML or JSON): its values become the defaults, so flags typed on the
  command line win over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Optional, Sequence

from transformers import HfArgumentParser

from .settings_values import is_plain, read_settings_file, typed_value

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


class SettingsParser(HfArgumentParser):
    """``HfArgumentParser`` for our settings dataclasses, plus ``--config FILE`` (flags override it).

    Args:
        dataclass_types: the settings dataclass(es), as for ``HfArgumentParser``.
        config_help: help of ``--config``; ``None`` adds no ``--config`` flag.
        **kwargs: passed to ``argparse.ArgumentParser`` (``prog``, ``description``, ...).
    """

    def __init__(self, dataclass_types: Any, config_help: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(dataclass_types, **kwargs)
        if config_help is not None and len(self.dataclass_types) != 1:
            raise ValueError("--config reads the settings of one dataclass: pass exactly one dataclass type")
        self.config_help = config_help
        if config_help is not None:
            self.add_argument(CONFIG_FLAG, default=None, metavar="FILE.yaml|json", help=config_help)

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
        """Plain fields go to ``HfArgumentParser``; sequences, dicts and ``Any`` get a text converter."""
        if is_plain(field.type):
            HfArgumentParser._parse_dataclass_field(parser, field)
            negative = parser._actions[-1]  # HfArgumentParser adds --no-<name> last for a True bool
            if negative.option_strings[0].startswith("--no_") and negative.dest == field.name:
                negative.help, negative.default = f"turn {negative.option_strings[0][5:]} off", argparse.SUPPRESS
            return
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
        parser.add_argument(*options, *aliases, type=_converter(field.type, field.name), **kwargs)

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
