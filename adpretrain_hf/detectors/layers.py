"""Which of the extractor's feature maps a detector uses: one rule for every detector.

``layer_positions=`` are 0-based positions in the extractor's list of maps (negative from the
end; not the 1-indexed block numbers of ``ADPretrainConfig.layers``); without it a detector uses
its class's ``default_last_positions`` (its published default, the last k; ``None`` = all).
Training-free detectors apply the choice in ``FeatureMapDetector._select`` (``base.py``); the
trained ones, which take the whole extractor output, get it from the ``SelectsLayerPositions``
mixin, which wraps their extractor in a ``LayerSelectingExtractor``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

__all__ = [
    "LayerSelectingExtractor",
    "SelectsLayerPositions",
    "check_layer_positions_argument",
    "chosen_positions",
    "resolve_layer_positions",
]


def resolve_layer_positions(
    layer_positions: Optional[Sequence[int]], num_layers: int, default_last: Optional[int] = None
) -> list[int]:
    """Turn a user's choice of positions into sorted-as-given non-negative positions.

    Args:
        layer_positions: 0-based positions in the extractor's list of maps (negative counts
            from the end), or ``None`` for the default. (Not backbone block numbers: those are
            ``ADPretrainConfig.layers``, 1-indexed.)
        num_layers: how many maps the extractor returns.
        default_last: with ``layer_positions=None``, take the last ``default_last`` positions
            (all of them when fewer exist); ``None`` takes all.
    """
    if layer_positions is None:
        count = num_layers if default_last is None else min(default_last, num_layers)
        return list(range(num_layers - count, num_layers))
    check_layer_positions_argument(layer_positions)
    resolved = []
    for index in layer_positions:
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"layer positions must be ints, got {index!r} in layer_positions={list(layer_positions)!r}")
        if not -num_layers <= index < num_layers:
            raise ValueError(
                f"layer position {index} is out of range: the extractor returns {num_layers} layers "
                f"(valid positions {-num_layers}..{num_layers - 1})"
            )
        resolved.append(index % num_layers)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layer_positions={list(layer_positions)!r} names the same layer twice: give each position once")
    return resolved


def check_layer_positions_argument(layer_positions: Optional[Sequence[int]]) -> Optional[list[int]]:
    """``None`` or a non-empty sequence of positions (range-checked later, against the extractor)."""
    if layer_positions is not None and (isinstance(layer_positions, (int, str)) or len(layer_positions) == 0):
        raise ValueError(
            f"layer_positions must be a non-empty sequence of positions (e.g. [0, 2]) or None, got {layer_positions!r}"
        )
    return None if layer_positions is None else list(layer_positions)


def chosen_positions(
    chosen: Optional[list[int]], layer_positions: Optional[Sequence[int]], num_layers: int, default_last: Optional[int]
) -> list[int]:
    """The positions resolved at the first call (``chosen is None``), or ``chosen`` re-checked
    against ``num_layers`` maps: an extractor that now returns fewer maps is an error."""
    if chosen is None:
        return resolve_layer_positions(layer_positions, num_layers, default_last)
    if max(chosen) >= num_layers:
        raise ValueError(
            f"the extractor now returns {num_layers} layers, but layer positions {chosen} were chosen: "
            "use the same extractor for fit and predict"
        )
    return chosen


class LayerSelectingExtractor:
    """An extractor returning only the maps at some positions of another extractor's list.

    The positions are resolved (``resolve_layer_positions``) at the first call, when the number
    of maps is known. ``kind``, ``image_size``, ``device`` and any other attribute come from
    the wrapped extractor.
    """

    def __init__(
        self, extractor: Any, layer_positions: Optional[Sequence[int]] = None, default_last: Optional[int] = None
    ) -> None:
        self.inner = extractor
        self.layer_positions = check_layer_positions_argument(layer_positions)
        self.default_last = default_last
        self.resolved_positions: Optional[list[int]] = None

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, H, W]`` -> the chosen positions' maps ``[B, C_l, h_l, w_l]``."""
        features = self.inner(pixel_values)
        if isinstance(features, torch.Tensor) or not isinstance(features, (list, tuple)):
            raise TypeError(f"the extractor must return a list of [B, C, h, w] maps, got {type(features).__name__}")
        self.resolved_positions = chosen_positions(self.resolved_positions, self.layer_positions, len(features), self.default_last)
        return [features[i] for i in self.resolved_positions]


class SelectsLayerPositions:
    """Mixin giving a detector built on the whole extractor output ``layer_positions=`` and a default.

    Put it first among the bases (``class CFLOW(SelectsLayerPositions, TrainedDetector)``): it
    takes ``layer_positions`` from the keyword arguments
    and hands the rest of the constructor a ``LayerSelectingExtractor`` over the chosen positions
    (``None``: the class's ``default_last_positions``, i.e. its published default).
    """

    def __init__(self, extractor: Any, *args: Any, layer_positions: Optional[Sequence[int]] = None, **kwargs: Any) -> None:
        self.layer_positions = check_layer_positions_argument(layer_positions)
        if self.layer_positions is not None or self.default_last_positions is not None:
            extractor = LayerSelectingExtractor(extractor, self.layer_positions, self.default_last_positions)
        super().__init__(extractor, *args, **kwargs)
