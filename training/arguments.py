"""Pretraining arguments: the paper's schedule as defaults, YAML configs and CLI overrides.

Every value is checked against its field's type and range before anything is built, so a
typo or a bad number stops the run with one line naming the field and the fix (the CLI
exits with status 2), instead of training the wrong schedule or failing deep in the loop.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

TRACKERS_OFF = "none"
"""``report_to`` value that logs to ``metrics.jsonl`` only (no tracker package needed)."""
DEFAULT_TRACKER = "tensorboard"
NULL_WORDS = ("null", "none", "~")  # --set key=null for Optional fields


@dataclass
class PretrainArguments:
    """Everything ``training/pretrain.py`` takes (paper section 4.1, REFERENCE_NOTES "Training").

    ``model`` holds :class:`ADPretrainConfig` field overrides on top of ``preset``.
    """

    data_root: Optional[str] = None
    output_dir: str = "outputs/adpretrain"
    preset: str = "clip-large"
    model: dict = field(default_factory=dict)
    backbone_weights: Optional[str] = None  # "auto" = config.backbone_id; or an id / local folder
    categories: Optional[list] = None
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 5e-4
    lr_milestones: list = field(default_factory=lambda: [7, 9])  # epochs after which lr x= lr_gamma
    lr_gamma: float = 0.1
    seed: int = 42
    mixed_precision: str = "auto"  # "auto" = bf16 autocast on GPU, none on CPU; fp32 master weights
    gradient_accumulation_steps: int = 1
    max_steps: Optional[int] = None
    checkpoint_every_steps: Optional[int] = None  # None = at the end of every epoch
    checkpoints_total_limit: int = 2
    resume: Optional[str] = None  # "latest" or a checkpoint folder
    num_workers: int = 2
    center_batches: int = 8  # batches used to estimate the initial center c
    center_momentum: Optional[float] = 0.99  # projected mode: running mean; None = cumulative
    skip_normal_only_batches: bool = False  # the release skips batches without anomalous images
    feature_cache_images: int = 4096  # reference images whose backbone tokens are kept (0 = off)
    loss_chunk_elements: int = 1 << 26  # bound of the angle loss's similarity block
    push_to_hub: bool = False
    hub_model_id: Optional[str] = None
    progress: bool = True
    report_to: str = DEFAULT_TRACKER  # Accelerate tracker(s): tensorboard, wandb, ..., "all" or "none"

    def validate(self) -> "PretrainArguments":
        _check_types(self)
        _check_model_fields(self.model)
        _check_ranges(self)
        tracker_names(self.report_to)
        if not self.data_root:
            raise ValueError("data_root is not set: pass --data-root <Real-IAD folder> (or data_root: in the YAML config)")
        if not Path(self.data_root).is_dir():
            raise ValueError(f"data_root {self.data_root!r} is not a folder: point it at the Real-IAD root (<class>/OK, <class>/NG)")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: choose auto, no, bf16 or fp16")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (e.g. your-name/adpretrain-clip-large)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Lower bounds of numeric fields: (minimum, what to pass instead). None values are allowed where the type is Optional.
_MINIMA: dict[str, tuple[int, str]] = {
    "epochs": (1, "pass --epochs 1 or more"),
    "batch_size": (1, "pass --batch-size 1 or more (images per process and step)"),
    "gradient_accumulation_steps": (1, "pass 1 (no accumulation) or more"),
    "max_steps": (1, "pass --max-steps 1 or more, or leave it out to train the full schedule"),
    "checkpoint_every_steps": (1, "pass 1 or more, or leave it out to save at the end of every epoch"),
    "checkpoints_total_limit": (1, "keep at least 1 checkpoint"),
    "num_workers": (0, "pass 0 (load in the main process) or more"),
    "center_batches": (1, "pass 1 or more batches for the initial center"),
    "feature_cache_images": (0, "pass 0 (no cache) or more"),
    "loss_chunk_elements": (1, "pass a positive element count"),
    "seed": (0, "pass a non-negative seed"),
}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(PretrainArguments)


def _type_matches(value: Any, hint: Any) -> bool:
    """``isinstance`` for the simple hints used here (int, float, str, bool, list, dict, Optional[...])."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        return any(_type_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    hint = origin or hint
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    inner = args[0] if typing.get_origin(hint) is typing.Union and args else hint
    name = getattr(typing.get_origin(inner) or inner, "__name__", str(inner))
    return f"{name} or null" if inner is not hint else name


def _article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _check_types(args: "PretrainArguments") -> None:
    for name, hint in _field_types().items():
        value = getattr(args, name)
        if not _type_matches(value, hint):
            raise ValueError(
                f"{name} must be {_article(_type_name(hint))}, got {value!r} ({type(value).__name__}): "
                f"fix --{name.replace('_', '-')} / --set {name}=... / {name}: in the YAML config"
            )


def model_config_fields() -> list[str]:
    """Names ``ADPretrainConfig`` takes (what ``model.<field>`` may set)."""
    from adpretrain_hf.modeling import ADPretrainConfig

    skip = {"self", "kwargs"}
    return [p for p in inspect.signature(ADPretrainConfig.__init__).parameters if p not in skip]


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(choices))}"


def _check_model_fields(model: dict) -> None:
    known = model_config_fields()
    for key in model:
        if key not in known:
            raise ValueError(f"model.{key} is not an ADPretrainConfig field: {_suggest(key, known)}")


def _check_ranges(args: "PretrainArguments") -> None:
    for name, (minimum, fix) in _MINIMA.items():
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}: {fix}")


def tracker_names(report_to: str) -> Optional[list[str]]:
    """``report_to`` -> Accelerate's ``log_with`` (``None`` for "none"); unknown or missing trackers fail here."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS
    from accelerate.utils import LoggerType

    names = [n.strip() for n in report_to.split(",") if n.strip()]
    if names == [TRACKERS_OFF] or not names:
        return None
    known = list(LOGGER_TYPE_TO_CLASS) + [LoggerType.ALL.value]
    for name in names:
        if name not in known:
            raise ValueError(f"report_to={name!r} is not a tracker: {_suggest(name, known + [TRACKERS_OFF])}")
        tracker = LOGGER_TYPE_TO_CLASS.get(name)
        if tracker is not None and not _tracker_installed(name):
            raise ValueError(f"report_to={name!r} but the {name} package is not installed: pip install {name}, or pass --report-to none")
    return names


def _tracker_installed(name: str) -> bool:
    from accelerate import utils

    check = getattr(utils, f"is_{name.replace('_', '')}_available", None) or getattr(utils, f"is_{name}_available", None)
    return bool(check()) if check is not None else True


def _parse_value(text: str) -> Any:
    """``--set key=value`` values: numbers (``1e-4`` too, which YAML 1.1 reads as a string),
    then YAML scalars/lists: true, [6, 12], null, clip-large."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def load_arguments(config_path: Optional[str], cli_values: dict[str, Any], overrides: list[str]) -> PretrainArguments:
    """YAML config, then explicit CLI flags, then ``--set a.b=value`` overrides (model.* for ADPretrainConfig)."""
    values: dict[str, Any] = {}
    if config_path:
        with open(config_path) as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{config_path} must hold a mapping of argument: value lines")
        names = [f.name for f in dataclasses.fields(PretrainArguments)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown keys in {config_path}: {unknown} ({_suggest(unknown[0], names)})")
        for key, value in values.items():  # YAML 1.1 reads 1e-4 as a string
            if isinstance(value, str) and not _type_matches(value, _field_types()[key]):
                values[key] = _parse_value(value)
    values.update({k: v for k, v in cli_values.items() if v is not None})
    values.setdefault("model", {})
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        key, text = item.split("=", 1)
        names = [f.name for f in dataclasses.fields(PretrainArguments)]
        if key.startswith("model."):
            if not isinstance(values["model"], dict):
                raise ValueError(f"model must be a mapping of ADPretrainConfig fields, got {values['model']!r}")
            values["model"][key[len("model.") :]] = _parse_value(text)
        elif key in names:
            values[key] = _parse_for_field(key, text)
        else:
            raise ValueError(
                f"--set {key}: not a pretraining argument ({_suggest(key, names)}; model.<field> for ADPretrainConfig fields)"
            )
    return PretrainArguments(**values)


def _parse_for_field(name: str, text: str) -> Any:
    """``--set`` text for a PretrainArguments field: kept as text for str fields, null for Optional ones."""
    hint = _field_types()[name]
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional and text.strip().lower() in NULL_WORDS:
        return None
    if _type_matches(text, hint):  # a str field: "123" stays the text the user typed
        return text
    return _parse_value(text)
