"""Pretraining arguments: the paper's schedule as defaults, YAML configs and CLI overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


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

    def validate(self) -> "PretrainArguments":
        if not self.data_root:
            raise ValueError("data_root is not set: pass --data-root <Real-IAD folder> (or data_root: in the YAML config)")
        if not Path(self.data_root).is_dir():
            raise ValueError(f"data_root {self.data_root!r} is not a folder: point it at the Real-IAD root (<class>/OK, <class>/NG)")
        for name in ("epochs", "batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: choose auto, no, bf16 or fp16")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (e.g. your-name/adpretrain-clip-large)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
        unknown = set(values) - {f.name for f in dataclasses.fields(PretrainArguments)}
        if unknown:
            raise ValueError(f"unknown keys in {config_path}: {sorted(unknown)}")
    values.update({k: v for k, v in cli_values.items() if v is not None})
    values.setdefault("model", {})
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        key, text = item.split("=", 1)
        if key.startswith("model."):
            values["model"][key[len("model.") :]] = _parse_value(text)
        elif key in {f.name for f in dataclasses.fields(PretrainArguments)}:
            values[key] = _parse_value(text)
        else:
            raise ValueError(f"--set {key}: not a pretraining argument (use model.<field> for ADPretrainConfig fields)")
    return PretrainArguments(**values)
