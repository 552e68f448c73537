"""Pretraining arguments: the paper's schedule as defaults, YAML configs and CLI overrides.

Every value is checked against its field's type and range before anything is built, so a
typo or a bad number stops the run with one line naming the field and the fix (the CLI
exits with status 2), instead of training the wrong schedule or failing deep in the loop.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from adpretrain_hf.settings_values import (
    check_known, dataclass_hints, read_settings_file, strip_optional, suggest, typed_value,
)

TRACKERS_OFF = "none"
"""``report_to`` value that logs to ``metrics.jsonl`` only (no tracker package needed)."""
DEFAULT_TRACKER = "tensorboard"
MIXED_PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")


@dataclass
class PretrainArguments:
    """Everything ``training/pretrain.py`` takes (paper section 4.1, REFERENCE_NOTES "Training").

    ``model`` holds :class:`ADPretrainConfig` field overrides on top of ``preset``.
    """

    data_root: Optional[str] = field(default=None, metadata={"help": "Real-IAD root folder (<class>/OK, <class>/NG)"})
    output_dir: str = field(default="outputs/adpretrain", metadata={"help": "where the checkpoint, logs and metrics go"})
    preset: str = field(default="clip-large", metadata={"help": "model preset, e.g. clip-large, dinov2-base, tiny-clip"})
    model: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "ADPretrainConfig field overrides on top of the preset, a YAML mapping (or --set model.<field>=value)"})
    backbone_weights: Optional[str] = field(default=None, metadata={
        "help": "'auto' (the preset's backbone id) or an id / local folder (None: random backbone)"})
    categories: Optional[list[str]] = field(default=None, metadata={"help": "comma-separated classes (None: all)", "metavar": "A,B"})
    epochs: int = field(default=10, metadata={"help": "training epochs (paper: 10)"})
    batch_size: int = field(default=32, metadata={"help": "images per process and step (paper: 32)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (paper: 1e-4)"})
    weight_decay: float = field(default=5e-4, metadata={"help": "AdamW weight decay (paper: 5e-4)"})
    lr_milestones: list[int] = field(default_factory=lambda: [7, 9], metadata={
        "help": "epochs after which the learning rate is multiplied by lr_gamma", "metavar": "E1,E2"})
    lr_gamma: float = field(default=0.1, metadata={"help": "learning-rate factor at each milestone"})
    seed: int = field(default=42, metadata={"help": "seed of every random draw (same seed, same run)"})
    mixed_precision: str = field(default="auto", metadata={
        "help": "auto = bf16 autocast on GPU, none on CPU; fp32 master weights", "choices": MIXED_PRECISION_CHOICES})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "batches per optimizer step"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "stop after this many optimizer steps (None: the full schedule)"})
    checkpoint_every_steps: Optional[int] = field(default=None, metadata={
        "help": "save an Accelerate checkpoint every N steps (None: at the end of every epoch)"})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "checkpoints kept on disk"})
    resume: Optional[str] = field(default=None, metadata={"help": "'latest' or a checkpoint folder to continue from"})
    num_workers: int = field(default=2, metadata={"help": "data-loader worker processes (0: load in the main process)"})
    center_batches: int = field(default=8, metadata={"help": "batches used to estimate the initial center c"})
    center_momentum: Optional[float] = field(default=0.99, metadata={
        "help": "projected center mode: running-mean momentum (None: cumulative mean)"})
    skip_normal_only_batches: bool = field(default=False, metadata={
        "help": "skip batches without anomalous images, as the release does"})
    stop_normal_inside_share: Optional[float] = field(default=None, metadata={
        "help": "OUR optional stop rule, not the paper's: stop once at least this share (e.g. 0.9) of the normal "
                "patches sit inside r at every layer for stop_patience consecutive logged steps (None: off)"})
    stop_patience: int = field(default=3, metadata={
        "help": "consecutive logged steps the stop rule (stop_normal_inside_share) must hold"})
    feature_cache_images: int = field(default=4096, metadata={
        "help": "reference images whose backbone tokens are kept in memory (0: off)"})
    loss_chunk_elements: int = field(default=1 << 26, metadata={"help": "bound of the angle loss's similarity block"})
    push_to_hub: bool = field(default=False, metadata={"help": "upload the result to the Hub (needs hub_model_id)"})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "repo id for push_to_hub"})
    progress: bool = field(default=True, metadata={"help": "show the progress bar"})
    report_to: str = field(default=DEFAULT_TRACKER, metadata={
        "help": "Accelerate tracker(s) for the logs: tensorboard, wandb, ..., all, or none (metrics.jsonl only)"})

    def validate(self) -> "PretrainArguments":
        _check_types(self)
        check_known(self.model, model_config_fields(), "an ADPretrainConfig field (what a model.<field> key sets)")
        _check_ranges(self)
        tracker_names(self.report_to)
        if not self.data_root:
            raise ValueError("data_root is not set: pass --data-root <Real-IAD folder> (or data_root: in the YAML config)")
        if not Path(self.data_root).is_dir():
            raise ValueError(f"data_root {self.data_root!r} is not a folder: point it at the Real-IAD root (<class>/OK, <class>/NG)")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: choose one of {', '.join(MIXED_PRECISION_CHOICES)}")
        share = self.stop_normal_inside_share
        if share is not None and not 0.0 < share <= 1.0:
            raise ValueError(f"stop_normal_inside_share={share} is invalid: pass a share in (0, 1], e.g. 0.9, or leave it out (off)")
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
    "stop_patience": (1, "pass 1 or more logged steps"),
    "feature_cache_images": (0, "pass 0 (no cache) or more"),
    "loss_chunk_elements": (1, "pass a positive element count"),
    "seed": (0, "pass a non-negative seed"),
}


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
    inner, optional = strip_optional(hint)
    name = getattr(typing.get_origin(inner) or inner, "__name__", str(inner))
    return f"{name} or null" if optional else name


def _article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _check_types(args: "PretrainArguments") -> None:
    for name, hint in dataclass_hints(PretrainArguments).items():
        value = getattr(args, name)
        if not _type_matches(value, hint):
            raise ValueError(
                f"{name} must be {_article(_type_name(hint))}, got {value!r} ({type(value).__name__}): "
                f"fix --{name.replace('_', '-')} / --set {name}=... / {name}: in the YAML config"
            )


def model_config_fields() -> list[str]:
    """Names ``ADPretrainConfig`` takes (what ``model.<field>`` may set): its init parameters and
    the loss options (``LossOptions``' fields, which the config takes by name)."""
    from adpretrain_hf.modeling import ADPretrainConfig
    from adpretrain_hf.modeling.loss_options_adpretrain import LossOptions

    skip = {"self", "kwargs"}
    return [p for p in inspect.signature(ADPretrainConfig.__init__).parameters if p not in skip] + list(LossOptions.names())


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
            raise ValueError(f"report_to={name!r} is not a tracker: {suggest(name, known + [TRACKERS_OFF])}")
        tracker = LOGGER_TYPE_TO_CLASS.get(name)
        if tracker is not None and not _tracker_installed(name):
            raise ValueError(f"report_to={name!r} but the {name} package is not installed: pip install {name}, or pass --report-to none")
    return names


def _tracker_installed(name: str) -> bool:
    from accelerate import utils

    check = getattr(utils, f"is_{name.replace('_', '')}_available", None) or getattr(utils, f"is_{name}_available", None)
    return bool(check()) if check is not None else True


def model_config_hints() -> dict[str, Any]:
    """``ADPretrainConfig`` init parameter -> its type hint (what ``model.<field>`` may set, and how it is read)."""
    from adpretrain_hf.modeling import ADPretrainConfig
    from adpretrain_hf.modeling.loss_options_adpretrain import LossOptions

    hints = {**typing.get_type_hints(ADPretrainConfig.__init__), **typing.get_type_hints(LossOptions)}
    return {name: hints.get(name, Any) for name in model_config_fields()}


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set key=value`` / ``--set model.<field>=value`` on top of ``values``: the name is checked
    against :class:`PretrainArguments` / ``ADPretrainConfig`` and the text read with that field's type."""
    values = {**values, "model": dict(values.get("model") or {})}
    argument_hints = dataclass_hints(PretrainArguments)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        key, text = item.split("=", 1)
        if key.startswith("model."):
            name, hints, what = key[len("model.") :], model_config_hints(), "an ADPretrainConfig field"
        elif key in argument_hints:
            name, hints, what = key, argument_hints, "a pretraining argument"
        else:
            raise ValueError(
                f"--set {key}: not a pretraining argument ({suggest(key, argument_hints)}; model.<field> for ADPretrainConfig fields)"
            )
        if name not in hints:
            raise ValueError(f"--set {key}: {name!r} is not {what}: {suggest(name, hints)}")
        try:
            value = typed_value(text, hints[name])
        except ValueError as err:
            raise ValueError(f"--set {key}={text}: {err}") from None
        if key.startswith("model."):
            values["model"][name] = value
        else:
            values[key] = value
    return values


def load_arguments(config_path: Optional[str], cli_values: dict[str, Any], overrides: list[str]) -> PretrainArguments:
    """YAML config, then explicit CLI values (``None``: keep), then ``--set`` overrides (model.* for ADPretrainConfig)."""
    values = read_settings_file(config_path, PretrainArguments) if config_path else {}
    values.update({k: v for k, v in cli_values.items() if v is not None})
    return PretrainArguments(**apply_overrides(values, overrides))
