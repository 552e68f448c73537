"""Shared machinery of the *trained* downstream detectors (CFLOW, GLASS, UniAD).

PatchCore, PaDiM and FeatureNorm only store statistics; these three train a small network
on top of the frozen features. What they share lives here, once:

- the extractor is frozen, so features are extracted **once** at ``fit`` and every epoch
  trains on the cached per-layer maps ``[N, C_l, h_l, w_l]`` (float32, CPU);
- an ``accelerate.Accelerator`` places the network and runs mixed precision (one setting per
  process, an accelerate rule: see :func:`make_accelerator`);
- a fixed number of epochs with a tqdm bar per epoch (``progress=False`` silences it);
  optionally a validation split carved from the *normal training images* reports a loss
  per epoch and may keep the best epoch. Never select an epoch on test data;
- ``export_state()`` / ``from_state()`` give the weights and fit-time constants plus the
  config and layout (what ``ADPretrainDetectorModel`` stores); ``save(dir)`` / ``load(dir,
  extractor)`` write and read them as safetensors + JSON. A rebuilt detector's ``predict`` is
  bit-identical to the one that was saved.
"""

from __future__ import annotations

import copy
import json
import math
import os
from abc import abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Iterator, Sequence

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .base import Detector, FeatureExtractor, ImageBatches, iter_image_batches

CONFIG_FILE = "detector_config.json"
WEIGHTS_FILE = "detector.safetensors"
FORMAT_VERSION = 1
MIXED_PRECISION_CHOICES = (None, "no", "fp16", "bf16", "fp8")

LayerShapes = list[tuple[int, int, int]]  # per layer (C_l, h_l, w_l)


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


def make_accelerator(cpu: bool, mixed_precision: str | None) -> Accelerator:
    """An ``Accelerator``, with a clear error where accelerate refuses a second setting.

    accelerate keeps one process-wide state: once an Accelerator exists, another one with a
    different ``mixed_precision`` (or ``cpu=True`` on a GPU state) raises. We translate
    that into the fix instead of resetting a state other code may be using.
    """
    try:
        return Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    except ValueError as err:
        if "already been initialized" not in str(err):
            raise
        raise ValueError(
            f"this process already has an accelerate state that conflicts with cpu={cpu}, "
            f"mixed_precision={mixed_precision!r} (accelerate allows one setting per process): pass "
            "mixed_precision=None to inherit it, the same value as before, or accelerator=<the existing one>"
        ) from err


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for a block and restore the caller's RNG state afterwards."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def concat_feature_batches(feature_batches: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """Per-batch per-layer maps -> per-layer ``[N, C_l, h_l, w_l]`` float32 on the CPU."""
    if len(feature_batches) == 0:
        raise ValueError("no features to fit on: pass at least one normal image")
    layout = [tuple(f.shape[1:]) for f in feature_batches[0]]
    if len(layout) == 0:
        raise ValueError("the extractor returned no layers: it must return a list of [B, C, h, w] maps")
    for batch in feature_batches:
        got = [tuple(f.shape[1:]) for f in batch]
        if got != layout or any(f.dim() != 4 for f in batch):
            raise ValueError(f"the extractor returned inconsistent layers across batches: {layout} then {got}")
    return [torch.cat([b[l].detach().float().cpu() for b in feature_batches]) for l in range(len(layout))]


def split_validation(features: list[torch.Tensor], fraction: float) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Hold out ``fraction`` of the normal training images (at random; seeded by the caller)."""
    n = features[0].shape[0]
    if fraction == 0.0:
        return features, None
    n_val = max(1, int(round(fraction * n)))
    if n_val >= n:
        raise ValueError(f"validation_fraction={fraction} leaves no training image out of {n}: lower it or add images")
    order = torch.randperm(n)
    val, train = order[:n_val], order[n_val:]
    return [f[train] for f in features], [f[val] for f in features]


class TrainedDetector(Detector):
    """A :class:`Detector` that trains a network on cached features.

    Subclasses set ``config_class`` and ``default_sigma`` and implement ``_build_model``,
    ``_make_optimizers``, ``_train_epoch``, ``_validation_loss`` and ``_score_grids``.
    Fit-time constants belong in the model as (persistent) buffers so they travel with
    the weights.
    """

    config_class: ClassVar[type[TrainedConfig]] = TrainedConfig
    default_sigma: ClassVar[float] = 4.0

    def __init__(
        self,
        extractor: FeatureExtractor,
        config: TrainedConfig | None = None,
        *,
        quick: bool = False,
        epochs: int | None = None,
        batch_size: int = 32,
        sigma: float | None = None,
        progress: bool = True,
        accelerator: Accelerator | None = None,
    ) -> None:
        if not callable(extractor) or not hasattr(extractor, "image_size"):
            raise TypeError("extractor must be a FeatureExtractor: a callable with kind, image_size and device")
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        if quick:
            config = config.quick()
        if epochs is not None:
            config = config.with_epochs(epochs)
        config.validate()
        super().__init__(extractor, batch_size=batch_size, sigma=self.default_sigma if sigma is None else sigma, progress=progress)
        self.config = config
        self.history = TrainingHistory()
        self.layer_shapes: LayerShapes | None = None
        self.model: nn.Module | None = None
        self._accelerator = accelerator

    # -- public API -------------------------------------------------------------------
    @property
    def accelerator(self) -> Accelerator:
        if self._accelerator is None:
            self._accelerator = make_accelerator(self.config.cpu, self.config.mixed_precision)
        return self._accelerator

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def fit(self, normal_images: ImageBatches) -> "TrainedDetector":
        """Extract features of the normal images once, then train for a fixed epoch count."""
        return super().fit(self._validated(normal_images))

    def predict(self, images: ImageBatches) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps ``[N, H, W]`` and image scores ``[N]``; each image scored independently."""
        return super().predict(self._validated(images))

    def export_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """Settings (method config, fitted layout, sigma, history) and the network's weights
        plus fit-time constants (its state dict, on the CPU)."""
        if not self.is_fitted or self.model is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(normal_images) first")
        settings = {
            "detector": self.name,
            "format_version": FORMAT_VERSION,
            "config": asdict(self.config),
            "layer_shapes": [list(s) for s in self.layer_shapes],
            "sigma": self.sigma,
            "batch_size": self.batch_size,
            "layers": getattr(self, "layers", None),
            "history": {"epoch_losses": self.history.epoch_losses, "val_losses": self.history.val_losses,
                        "best_epoch": self.history.best_epoch},
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return settings, state

    @classmethod
    def from_state(
        cls, extractor: FeatureExtractor, settings: dict[str, Any], state: dict[str, torch.Tensor], *,
        layers: list[int] | None = None, progress: bool = False, accelerator: Accelerator | None = None,
    ) -> "TrainedDetector":
        """Inverse of :meth:`export_state`: a fitted detector whose ``predict`` is bit-identical.

        ``layers`` (for detectors with ``layers=``) picks the extractor's layers; default: the
        ones chosen at fit (``settings["layers"]``, else the class default).
        """
        if settings.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"this detector was saved by a newer adpretrain_hf (format {settings['format_version']}): upgrade the package")
        if settings.get("detector") != cls.name:
            raise ValueError(f"the state holds a {settings.get('detector')!r} detector, not {cls.name!r}: load it with its own class")
        config = cls.config_class.from_dict(settings["config"])
        layers = settings.get("layers") if layers is None else layers
        choice = {} if layers is None else {"layers": layers}
        det = cls(extractor, config, batch_size=settings["batch_size"], sigma=settings["sigma"], progress=progress,
                  accelerator=accelerator, **choice)
        det.layer_shapes = [tuple(s) for s in settings["layer_shapes"]]
        history = settings.get("history", {})
        det.history = TrainingHistory(epoch_losses=history.get("epoch_losses", []), val_losses=history.get("val_losses", []),
                                      best_epoch=history.get("best_epoch"))
        model = det._build_model()
        model.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
        det.model = det.accelerator.unwrap_model(det.accelerator.prepare(model))
        det.model.eval()
        det.is_fitted = True
        return det

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``detector.safetensors`` (weights + fit-time constants) and ``detector_config.json``."""
        settings, state = self.export_state()
        os.makedirs(directory, exist_ok=True)
        save_file(state, os.path.join(directory, WEIGHTS_FILE), metadata={"detector": self.name})
        with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as fh:
            json.dump(settings, fh, indent=2)

    @classmethod
    def load(
        cls, directory: str | os.PathLike, extractor: FeatureExtractor, *, progress: bool = True,
        accelerator: Accelerator | None = None,
    ) -> "TrainedDetector":
        """Rebuild a detector saved by :meth:`save`; the extractor must give the fit-time layout."""
        path = os.path.join(directory, CONFIG_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}: save a fitted detector there first")
        with open(path, encoding="utf-8") as fh:
            settings = json.load(fh)
        state = load_file(os.path.join(directory, WEIGHTS_FILE))
        return cls.from_state(extractor, settings, state, progress=progress, accelerator=accelerator)

    # -- the training pipeline (base.Detector hook) --------------------------------------
    def _fit(self, feature_batches: list[list[torch.Tensor]]) -> None:
        features = concat_feature_batches(feature_batches)
        self.layer_shapes = [tuple(f.shape[1:]) for f in features]
        self.history = TrainingHistory()
        acc = self.accelerator
        with seeded(self.config.seed, acc.device):
            train, val = split_validation(features, self.config.validation_fraction)
            model = self._build_model()
            # prepare() places the model (in place) and wraps the optimisers for mixed precision;
            # we keep the plain module: the detectors call its submodules directly.
            prepared = acc.prepare(model, *self._make_optimizers(model))
            self.model, optimizers = acc.unwrap_model(prepared[0]), list(prepared[1:])
            self._before_training(train)
            self._run_epochs(train, val, optimizers)
            self.model.eval()
            with torch.no_grad():
                self._after_training(train)

    def _run_epochs(self, train: list[torch.Tensor], val: list[torch.Tensor] | None, optimizers: list) -> None:
        best: tuple[float, dict[str, torch.Tensor]] | None = None
        bar = tqdm(range(self.config.num_epochs), desc=f"{self.name}: train", unit="epoch", disable=not self.progress, leave=False)
        for epoch in bar:
            self.model.train()
            losses = self._train_epoch(train, epoch, optimizers)
            if not all(math.isfinite(x) for x in losses):
                raise FloatingPointError(
                    f"{self.name}: non-finite training loss at epoch {epoch}: lower the learning rate or use mixed_precision='no'"
                )
            self.history.step_losses.extend(losses)
            self.history.epoch_losses.append(sum(losses) / max(len(losses), 1))
            postfix = {"loss": f"{self.history.epoch_losses[-1]:.4g}"}
            if val is not None:
                self.model.eval()
                with torch.no_grad():
                    v = float(self._validation_loss(val))
                self.history.val_losses.append(v)
                postfix["val"] = f"{v:.4g}"
                if self.config.keep_best_on_validation and (best is None or v < best[0]):
                    best = (v, copy.deepcopy(self.model.state_dict()))
                    self.history.best_epoch = epoch
            bar.set_postfix(postfix)
        if best is not None:
            self.model.load_state_dict(best[1])

    # -- helpers for subclasses ----------------------------------------------------------
    def _minibatches(self, features: list[torch.Tensor], batch_size: int) -> Iterator[list[torch.Tensor]]:
        """Shuffled per-layer training batches on the device; the last partial batch is dropped
        (as the releases' ``drop_last=True``) unless it is the only one."""
        n = features[0].shape[0]
        order = torch.randperm(n)
        stop = n - n % batch_size if n >= batch_size else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield [f[idx].to(self.device, non_blocking=True) for f in features]

    def _eval_batches(self, features: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
        """All images in order, ``self.batch_size`` at a time, on the device (statistics, validation)."""
        for start in range(0, features[0].shape[0], self.batch_size):
            yield [f[start : start + self.batch_size].to(self.device, non_blocking=True) for f in features]

    def _check_features(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Features of one batch, checked against the fit-time layout and moved to the device."""
        got = [tuple(f.shape[1:]) for f in features]
        if got != [tuple(s) for s in self.layer_shapes]:
            raise ValueError(
                f"features do not match the fitted layout: fitted on (C, h, w) per layer {self.layer_shapes}, got {got}; "
                "use the same extractor (layers, image size) as at fit"
            )
        return [f.to(self.device).float() for f in features]

    def _validated(self, images: ImageBatches) -> Iterator[torch.Tensor]:
        """Image batches checked against the extractor's input contract (lazy)."""
        size = tuple(self.extractor.image_size)
        for batch in iter_image_batches(images, self.batch_size):
            if not batch.is_floating_point():
                raise TypeError(f"pixel values must be floating point (normalised), got {batch.dtype}: preprocess them first")
            if batch.shape[1] != 3 or tuple(batch.shape[-2:]) != size:
                raise ValueError(
                    f"images must be [N, 3, {size[0]}, {size[1]}] for this extractor, got {tuple(batch.shape)}: "
                    "resize/crop with the extractor's image processor"
                )
            yield batch

    def _before_training(self, train: list[torch.Tensor]) -> None:
        """Hook: fit-time statistics needed before the first step (GLASS's centre)."""

    def _after_training(self, train: list[torch.Tensor]) -> None:
        """Hook: fit-time constants computed with the trained model (CFLOW's normaliser)."""

    @abstractmethod
    def _build_model(self) -> nn.Module:
        """The network for ``self.layer_shapes`` and ``self.config`` (also used by ``load``)."""

    @abstractmethod
    def _make_optimizers(self, model: nn.Module) -> list[torch.optim.Optimizer]:
        """The method's optimisers, before accelerate wraps them."""

    @abstractmethod
    def _train_epoch(self, train: list[torch.Tensor], epoch: int, optimizers: list) -> list[float]:
        """One epoch over the cached training features; returns the loss of every step."""

    @abstractmethod
    def _validation_loss(self, val: list[torch.Tensor]) -> float:
        """The training objective on held-out normal images (no augmentation noise where possible)."""
