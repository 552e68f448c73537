"""The center ``c`` of the angle loss: mean of the normal patch features, per layer.

Two modes, one accumulator:

``"residual"`` (the release): ``c_l`` is the mean of the *un-projected* residual features of
    normal patches over the pretraining set, computed once before training with
    ``CenterEstimator`` (feed it ``residuals`` with ``labels=None`` for normal images, or with
    the patch labels for anomalous ones), then subtracted from the *projected* features.
``"projected"`` (the paper, Sec. 3.2): ``c = E_{x in X_normal}[x]`` of the features the loss
    sees. Those change while the projector trains, so ``RunningCenter`` keeps a running
    estimate during training: an exponential moving average (``momentum`` = weight of the old
    value) or, with ``momentum=None``, the cumulative mean of all normal features seen so far.
    Use it as: ``c = running.compute()`` (the estimate *before* this batch), compute the loss,
    then ``running.update(detached projected features of both views, labels)``. Pass
    ``initial=`` (e.g. the residual center) to have a center on the very first step.

Accumulation is in float64 on the features' device, with no host synchronisation in ``update``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import check_features, check_labels

__all__ = ["CENTER_MOMENTUM", "CenterEstimator", "RunningCenter"]

CENTER_MOMENTUM = 0.99
"""Default weight of the old value in ``RunningCenter``'s moving average (our choice; the paper
does not say how its center follows the training features)."""


def _normal_sum_count(features: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum (float64 ``[D]``) and count (float64 0-d) of the normal rows of ``features [..., D]``."""
    flat = features.detach().reshape(-1, features.shape[-1]).to(torch.float64)  # [M, D]
    if labels is None:
        return flat.sum(dim=0), flat.new_tensor(float(flat.shape[0]))
    weights = (~labels).reshape(-1).to(torch.float64)  # [M], 1 for normal rows
    return weights @ flat, weights.sum()


class CenterEstimator:
    """Streaming mean of the normal patch features of each layer.

    Args:
        num_layers: expected number of layers (checked on every update); ``None`` = taken from
            the first update.
    """

    def __init__(self, num_layers: int | None = None) -> None:
        if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1):
            raise ValueError(f"num_layers={num_layers!r} is invalid: pass a positive int or None")
        self.num_layers = num_layers
        self._sums: list[torch.Tensor] | None = None
        self._counts: list[torch.Tensor] | None = None

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._sums, self._counts = None, None

    def _prepare(
        self, features: Sequence[torch.Tensor], labels: Sequence[torch.Tensor | None] | None
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        if isinstance(features, torch.Tensor) or not isinstance(features, Sequence):
            raise TypeError("features must be a list with one [B, N, D] tensor per layer: wrap one layer as [x]")
        if self.num_layers is None:
            self.num_layers = len(features)
        if len(features) != self.num_layers:
            raise ValueError(f"got {len(features)} layers but this estimator tracks {self.num_layers}: pass every layer")
        if labels is None:
            labels = [None] * len(features)
        elif isinstance(labels, torch.Tensor) or len(labels) != len(features):
            raise ValueError("labels must be None (all normal) or a list with one [B, N] tensor per layer")
        pairs = []
        for layer, (x, lab) in enumerate(zip(features, labels)):
            check_features(f"features[{layer}]", x, ndim=None)
            if lab is not None:
                lab = check_labels(f"labels[{layer}]", lab, x.shape[:-1], x.device)
            if self._sums is not None and self._sums[layer].shape[0] != x.shape[-1]:
                raise ValueError(
                    f"features[{layer}] has {x.shape[-1]} channels but earlier updates had "
                    f"{self._sums[layer].shape[0]}: keep the layer order fixed"
                )
            pairs.append((x, lab))
        return pairs

    @torch.no_grad()
    def update(
        self, features: Sequence[torch.Tensor], labels: Sequence[torch.Tensor | None] | None = None
    ) -> None:
        """Add a batch.

        Args:
            features: per layer ``[B, N_l, D_l]`` (any ``[..., D_l]``) features; detached here.
            labels: per layer ``[B, N_l]`` bool, True = anomalous (excluded); ``None`` = all normal.
        """
        pairs = self._prepare(features, labels)
        self._accumulate([_normal_sum_count(x, lab) for x, lab in pairs])

    def _accumulate(self, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add per-layer (float64 sum ``[D]``, float64 count) pairs."""
        if self._sums is None:
            self._sums = [s for s, _ in stats]
            self._counts = [c for _, c in stats]
        else:
            self._sums = [old + s.to(old.device) for old, (s, _) in zip(self._sums, stats)]
            self._counts = [old + c.to(old.device) for old, (_, c) in zip(self._counts, stats)]

    @property
    def num_seen(self) -> list[int]:
        """Number of normal features accumulated per layer."""
        return [] if self._counts is None else [int(c) for c in self._counts]

    def compute(self, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """Per layer, the ``[D_l]`` mean of all normal features seen (cast to ``dtype``)."""
        if self._sums is None:
            raise ValueError("no features seen yet: call update(features, labels) before compute()")
        centers = []
        for layer, (total, count) in enumerate(zip(self._sums, self._counts)):
            if float(count) == 0:
                raise ValueError(
                    f"no normal patch feature seen for layer {layer}: update() with batches that hold "
                    "normal patches (label False) before compute()"
                )
            centers.append((total / count).to(dtype))
        return centers

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        """Float64 sums and counts, for checkpointing."""
        return {"sums": list(self._sums or []), "counts": list(self._counts or [])}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        """Restore what ``state_dict`` returned."""
        sums, counts = list(state["sums"]), list(state["counts"])
        if len(sums) != len(counts):
            raise ValueError("state has different numbers of sums and counts: pass what state_dict() returned")
        self._sums, self._counts = (sums, counts) if sums else (None, None)
        self.num_layers = len(sums) if sums else self.num_layers


class RunningCenter(CenterEstimator):
    """Center of the projected normal features, followed during training (the paper's mode).

    Args:
        momentum: weight of the old value, ``c <- momentum * c + (1 - momentum) * batch_mean``
            (batch mean over the normal features of the update); ``None`` = cumulative mean of
            every normal feature seen so far. A layer with no normal feature in a batch is left as is.
        initial: optional per-layer ``[D_l]`` starting centers, returned until a layer has seen
            data; with a momentum the average starts from them (else from the first batch mean).
        num_layers: as for ``CenterEstimator``.
    """

    def __init__(
        self,
        momentum: float | None = CENTER_MOMENTUM,
        initial: Sequence[torch.Tensor] | None = None,
        num_layers: int | None = None,
    ) -> None:
        if momentum is not None and not (isinstance(momentum, (int, float)) and 0.0 <= float(momentum) < 1.0):
            raise ValueError(f"momentum={momentum!r} is invalid: pass a number in [0, 1), or None for a cumulative mean")
        if initial is not None:
            initial = [c.detach().to(torch.float64).reshape(-1) for c in initial]
            if num_layers is not None and len(initial) != num_layers:
                raise ValueError(f"initial has {len(initial)} centers but num_layers={num_layers}")
            num_layers = len(initial)
        super().__init__(num_layers)
        self.momentum = None if momentum is None else float(momentum)
        self._initial = initial
        self._value: list[torch.Tensor] | None = None  # EMA state per layer
        self._seen: list[torch.Tensor] | None = None  # bool 0-d per layer

    def reset(self) -> None:
        super().reset()
        self._value, self._seen = None, None

    def _prepare(
        self, features: Sequence[torch.Tensor], labels: Sequence[torch.Tensor | None] | None
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        pairs = super()._prepare(features, labels)
        if self._initial is not None:
            for layer, (x, _) in enumerate(pairs):
                if x.shape[-1] != self._initial[layer].shape[0]:
                    raise ValueError(
                        f"features[{layer}] has {x.shape[-1]} channels but initial[{layer}] has "
                        f"{self._initial[layer].shape[0]}: pass matching initial centers"
                    )
        return pairs

    def _accumulate(self, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Counts and cumulative sums as the base class, plus the moving average."""
        super()._accumulate(stats)
        if self.momentum is None:
            return
        if self._value is None:
            self._value, self._seen = [], []
            for layer, (total, _) in enumerate(stats):
                start = self._initial[layer].to(total.device) if self._initial is not None else torch.zeros_like(total)
                self._value.append(start)
                self._seen.append(torch.tensor(self._initial is not None, device=total.device))
        for layer, (total, count) in enumerate(stats):
            has = count > 0
            mean = total / count.clamp(min=1.0)
            old = self._value[layer]
            moved = torch.where(self._seen[layer], self.momentum * old + (1.0 - self.momentum) * mean, mean)
            self._value[layer] = torch.where(has, moved, old)
            self._seen[layer] = self._seen[layer] | has

    def compute(self, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """Per layer, the current ``[D_l]`` center (the initial one where no data was seen yet)."""
        if self._counts is None:
            if self._initial is None:
                raise ValueError(
                    "no features seen yet: call update(features, labels) first, or pass initial= centers"
                )
            return [c.to(dtype) for c in self._initial]
        if self.momentum is None:
            if self._initial is None:
                return super().compute(dtype)
            return [
                (total / count if float(count) > 0 else init).to(dtype)
                for total, count, init in zip(self._sums, self._counts, self._initial)
            ]
        centers = []
        for layer, (value, seen) in enumerate(zip(self._value, self._seen)):
            if not bool(seen):
                raise ValueError(
                    f"no normal patch feature seen for layer {layer}: update() with batches that hold "
                    "normal patches (label False), or pass initial= centers"
                )
            centers.append(value.to(dtype))
        return centers

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        """As ``CenterEstimator.state_dict``, plus the moving average and its seen flags."""
        state = super().state_dict()
        state["value"], state["seen"] = list(self._value or []), list(self._seen or [])
        return state

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        """Restore what ``state_dict`` returned."""
        super().load_state_dict(state)
        value, seen = list(state.get("value", [])), list(state.get("seen", []))
        self._value, self._seen = (value, seen) if value else (None, None)
