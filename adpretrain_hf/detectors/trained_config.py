"""The settings and the training record every trained detector (CFLOW, GLASS, UniAD) shares.

Kept apart from the loop (``trained.py``) and the scoring module (``network_module.py``)
because both read them: the loop takes its epochs, seed, precision and validation split
from a :class:`TrainedConfig`; a saved detector stores the config and the
:class:`TrainingHistory` as JSON and rebuilds both on load.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

MIXED_PRECISION_CHOICES = (None, "no", "fp16", "bf16", "fp8")


@dataclass
class TrainedConfig:
    """Fields every trained detector shares; method configs subclass it.

    Subclasses set ``epoch_field`` (the name of their epoch-count field, which ``epochs=``
    overrides) and ``quick_overrides`` (the smoke-test preset applied by ``quick=True``).
    """

    epoch_field: ClassVar[str] = "epochs"
    quick_overrides: ClassVar[dict[str, Any]] = {}

    batch_size: int = 8
    """Training images per optimisation batch (each method's published value)."""
    seed: int = 0
    """Seeds initialisation, shuffling and noise; the global RNG is restored after fit."""
    cpu: bool = False
    """Force the CPU even when an accelerator is visible."""
    mixed_precision: str | None = None
    """accelerate's ``"no" | "fp16" | "bf16" | "fp8"``; None keeps the process's current setting."""
    validation_fraction: float = 0.0
    """Share of the normal *training* images held out to report a validation loss per epoch."""
    keep_best_on_validation: bool = False
    """With a validation split, restore the epoch with the lowest validation loss."""

    @property
    def num_epochs(self) -> int:
        return int(getattr(self, self.epoch_field))

    def quick(self) -> "TrainedConfig":
        """A copy cut to a few epochs for smoke tests (never for reported numbers)."""
        return replace(self, **self.quick_overrides)

    def with_epochs(self, epochs: int) -> "TrainedConfig":
        return replace(self, **{self.epoch_field: epochs})

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and its fix."""
        if self.num_epochs < 1:
            raise ValueError(f"{self.epoch_field} must be >= 1, got {self.num_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.keep_best_on_validation and self.validation_fraction == 0.0:
            raise ValueError("keep_best_on_validation needs a validation split: set validation_fraction > 0")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION_CHOICES}, got {self.mixed_precision!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainedConfig":
        """Inverse of ``asdict`` after a JSON round trip (lists back to tuples)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}: was this saved by another detector?")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass
class TrainingHistory:
    """Losses seen during fit: one per optimisation step, and per-epoch means."""

    step_losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    best_epoch: int | None = None
