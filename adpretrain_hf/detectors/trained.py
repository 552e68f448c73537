"""The training loop every *trained* downstream detector (CFLOW, GLASS, UniAD) runs.

PatchCore, PaDiM and FeatureNorm only store statistics; these three train a small network
on top of the frozen features. The loop they share lives here, once:

- the extractor is frozen, so features are extracted **once** at ``fit`` and every epoch
  trains on the cached per-layer maps ``[N, C_l, h_l, w_l]`` (float32, CPU);
- an ``accelerate.Accelerator`` places the network and runs mixed precision (one setting per
  process, an accelerate rule: see :func:`make_accelerator`);
- seeding (the caller's RNG is restored afterwards), a fixed number of epochs with a tqdm
  bar (``progress=False`` silences it), one optimiser step per loss the method yields
  (zero grad, backward, optional gradient clipping, step), the method's learning-rate
  schedule, a non-finite-loss check;
- optionally a validation split carved from the *normal training images* reports a loss
  per epoch and may keep the best epoch. Never select an epoch on test data.

A method supplies only what is its own (see the hooks at the end of
:class:`TrainedDetector`): the network, its optimisers, the loss(es) of one batch, the
validation loss of one batch, its score grids and, where it differs from the default, its
batches, learning rate and gradient clipping. Settings are in ``trained_config.py``,
its scoring module (network + settings) in ``network_module.py``.
"""

from __future__ import annotations

import copy
import math
from abc import abstractmethod
from contextlib import contextmanager
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from .base import Detector, FeatureExtractor
from .network_module import LayerShapes, NetworkModule
from .trained_config import MIXED_PRECISION_CHOICES, TrainedConfig, TrainingHistory

__all__ = [
    "MIXED_PRECISION_CHOICES", "LayerShapes", "TrainedConfig", "TrainedDetector", "TrainingHistory",
    "concat_feature_batches", "make_accelerator", "seeded", "split_validation",
]


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

    Subclasses set ``config_class``, ``module_class`` (their :class:`NetworkModule`, which builds
    the network and scores) and ``default_sigma`` and implement
    ``_make_optimizers``, ``_batch_losses`` and ``_validation_sums``
    (optionally ``_train_batches``, ``_learning_rate``, ``_max_grad_norm``,
    ``_before_training``, ``_after_training``). Fit-time constants belong in the model as
    (persistent) buffers so they travel with the weights.
    """

    config_class: ClassVar[type[TrainedConfig]] = TrainedConfig
    module_class: ClassVar[type[NetworkModule]] = NetworkModule
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

    # -- the training loop (base.Detector hook) ------------------------------------------
    def _fit(self, feature_batches: list[list[torch.Tensor]]) -> None:
        features = concat_feature_batches(feature_batches)
        self.layer_shapes = [tuple(f.shape[1:]) for f in features]
        self.history = TrainingHistory()
        acc = self.accelerator
        with seeded(self.config.seed, acc.device):
            train, val = split_validation(features, self.config.validation_fraction)
            model = self.module_class(config=self.config, layer_shapes=self.layer_shapes, sigma=self.sigma).net  # its network
            # prepare() places the model (in place) and wraps the optimisers for mixed precision;
            # we keep the plain module: the detectors call its submodules directly.
            prepared = acc.prepare(model, *self._make_optimizers(model))
            self.model, optimizers = acc.unwrap_model(prepared[0]), list(prepared[1:])
            self._before_training(train)
            self._run_epochs(train, val, optimizers)
            self.model.eval()
            with torch.no_grad():
                self._after_training(train)
        self.module = self.module_class(config=self.config, layer_shapes=self.layer_shapes, sigma=self.sigma, net=self.model)
        self.module.autocast_factory = self.accelerator.autocast

    def _run_epochs(self, train: list[torch.Tensor], val: list[torch.Tensor] | None, optimizers: list) -> None:
        """Every epoch: train, record its losses, then (with a split) the validation loss and the best state."""
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

    def _train_epoch(self, train: list[torch.Tensor], epoch: int, optimizers: list) -> list[float]:
        """One epoch: per batch set the method's learning rate, then one optimiser step per
        loss the method yields for it. Returns the loss of every step."""
        losses = []
        for index, batch in enumerate(self._train_batches(train, epoch)):
            lr = self._learning_rate(epoch, index, train)
            if lr is not None:
                for opt in optimizers:
                    for group in opt.param_groups:
                        group["lr"] = lr
            for loss in self._batch_losses(batch):
                self._optimizer_step(loss, optimizers)
                losses.append(loss.item())
        return losses

    def _optimizer_step(self, loss: torch.Tensor, optimizers: list) -> None:
        """Zero every optimiser's gradients, backpropagate (scaled under fp16), clip, step them all."""
        for opt in optimizers:
            opt.zero_grad()
        self.accelerator.backward(loss)
        max_norm = self._max_grad_norm()
        if max_norm is not None:
            self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        for opt in optimizers:
            opt.step()

    def _validation_loss(self, val: list[torch.Tensor]) -> float:
        """Mean of the method's per-element validation loss over all held-out images (in order)."""
        total, count = 0.0, 0
        for batch in self._eval_batches(val):
            for loss_sum, n in self._validation_sums(batch):
                total += loss_sum
                count += n
        return total / count

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

    def _used_features(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Features of one batch, checked against the fit-time layout and moved to the device."""
        return [f.to(self.device) for f in self.module.check_layout(features)]

    def _check_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Floating-point pixel values at the extractor's ``image_size``."""
        size = tuple(self.extractor.image_size)
        if not batch.is_floating_point():
            raise TypeError(f"pixel values must be floating point (normalised), got {batch.dtype}: preprocess them first")
        if batch.shape[1] != 3 or tuple(batch.shape[-2:]) != size:
            raise ValueError(
                f"images must be [N, 3, {size[0]}, {size[1]}] for this extractor, got {tuple(batch.shape)}: "
                "resize/crop with the extractor's image processor"
            )
        return batch

    # -- what a method supplies ----------------------------------------------------------
    def _train_batches(self, train: list[torch.Tensor], epoch: int) -> Iterable[Any]:
        """The batches of one epoch, drawn lazily (the RNG order is part of the result).
        Default: shuffled per-layer maps, ``config.batch_size`` images each."""
        return self._minibatches(train, self.config.batch_size)

    def _learning_rate(self, epoch: int, index: int, train: list[torch.Tensor]) -> float | None:
        """The lr for every parameter group before batch ``index`` of ``epoch``; None keeps the
        optimisers' own (default: no schedule)."""
        return None

    def _max_grad_norm(self) -> float | None:
        """Clip the gradient norm of all parameters to this before each step; None: no clipping."""
        return None

    def _before_training(self, train: list[torch.Tensor]) -> None:
        """Hook: fit-time statistics needed before the first step (GLASS's centre)."""

    def _after_training(self, train: list[torch.Tensor]) -> None:
        """Hook: fit-time constants computed with the trained model (CFLOW's normaliser)."""

    @abstractmethod
    def _make_optimizers(self, model: nn.Module) -> list[torch.optim.Optimizer]:
        """The method's optimisers, before accelerate wraps them."""

    @abstractmethod
    def _batch_losses(self, batch: Any) -> Iterator[torch.Tensor]:
        """Yield the scalar loss of each optimisation step one training batch makes (usually
        one; CFLOW makes several). The loop steps the optimisers after each yield, before
        the next loss is computed."""

    @abstractmethod
    def _validation_sums(self, batch: list[torch.Tensor]) -> Iterator[tuple[float, int]]:
        """Yield ``(sum of the per-element loss, element count)`` for held-out normal features
        (eval mode, no gradients); the validation loss is the overall mean."""
