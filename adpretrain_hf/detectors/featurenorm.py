"""FeatureNorm (the paper's training-free baseline) and the feature-map checks its siblings share.

FeatureNorm scores a patch by the L2 norm of its feature. With ADPretrain's projected
residual features the norm-oriented loss pushed normal features inside a small
hypersphere and anomalies outside it, so the norm alone is an anomaly score (paper,
Sec. 4.1 and Tab. 5); with raw backbone features the norm carries no such meaning, which
is the ~50 AUROC "FeatureNorm w/o" column of Tab. 1.

``FeatureMapDetector`` holds what PatchCore and PaDiM need as well: choosing positions in
the extractor's list of maps, validating the maps it returns, and checking that predict sees the
layout fit saw. (These helpers would sit naturally in ``base.py``; they live here because
this module is the simplest detector and every training-free detector imports it.)

Layer choice is one rule for every detector: ``layer_positions=`` (0-based positions in the
extractor's list, negative from the end; not the 1-indexed block numbers of
``ADPretrainConfig.layers``) or, by default, the class's ``default_last_positions`` (its
published default; ``None`` = all). ``layers=`` is accepted for one release with a FutureWarning.
``FeatureMapDetector`` applies it itself; the trained detectors (which take the whole
extractor output) get it from the ``SelectsLayerPositions`` mixin, which wraps their extractor in a
``LayerSelectingExtractor``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Iterator, Optional, Sequence

import torch

from ..modeling.anomaly_map_adpretrain import GAUSSIAN_SIGMA
from ..renamed_keywords import renamed_keyword
from .base import Detector, FeatureExtractor, ImageBatches

__all__ = [
    "DefaultLayerPositions",
    "FeatureMapDetector",
    "FeatureNorm",
    "LayerSelectingExtractor",
    "SelectsLayerPositions",
    "check_layer_positions_argument",
    "chosen_positions",
    "layer_positions_argument",
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
    if isinstance(layer_positions, int) or len(layer_positions) == 0:
        raise ValueError(f"layer_positions must be a non-empty sequence of positions (e.g. [0, 2]), got {layer_positions!r}")
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


def layer_positions_argument(
    layer_positions: Optional[Sequence[int]], layers: Optional[Sequence[int]], owner: str
) -> Optional[list[int]]:
    """A constructor's ``layer_positions=`` (or its deprecated ``layers=``), checked; the warning
    points at the constructor's caller."""
    return check_layer_positions_argument(renamed_keyword(layer_positions, layers, owner, stacklevel=4))


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


class DefaultLayerPositions:
    """Where a detector class declares its published layer default (one home for every detector)."""

    #: with ``layer_positions=None`` use the last this-many positions (``None``: all of them).
    default_last_positions: ClassVar[Optional[int]] = None


class LayerSelectingExtractor:
    """An extractor returning only the maps at some positions of another extractor's list.

    The positions are resolved (``resolve_layer_positions``) at the first call, when the number
    of maps is known. ``kind``, ``image_size``, ``device`` and any other attribute come from
    the wrapped extractor.
    """

    def __init__(
        self, extractor: Any, layer_positions: Optional[Sequence[int]] = None, default_last: Optional[int] = None,
        *, layers: Optional[Sequence[int]] = None,
    ) -> None:
        self.inner = extractor
        self.layer_positions = layer_positions_argument(layer_positions, layers, "LayerSelectingExtractor")
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


class SelectsLayerPositions(DefaultLayerPositions):
    """Mixin giving a detector built on the whole extractor output ``layer_positions=`` and a default.

    Put it first among the bases (``class CFLOW(SelectsLayerPositions, TrainedDetector)``): it
    takes ``layer_positions`` (or its deprecated old name ``layers``) from the keyword arguments
    and hands the rest of the constructor a ``LayerSelectingExtractor`` over the chosen positions
    (``None``: the class's ``default_last_positions``, i.e. its published default).
    """

    def __init__(
        self, extractor: Any, *args: Any, layer_positions: Optional[Sequence[int]] = None,
        layers: Optional[Sequence[int]] = None, **kwargs: Any,
    ) -> None:
        self.layer_positions = layer_positions_argument(layer_positions, layers, type(self).__name__)
        if self.layer_positions is not None or self.default_last_positions is not None:
            extractor = LayerSelectingExtractor(extractor, self.layer_positions, self.default_last_positions)
        super().__init__(extractor, *args, **kwargs)


class FeatureMapDetector(DefaultLayerPositions, Detector):
    """A ``Detector`` that validates images and feature maps and remembers the fitted layout.

    Args:
        extractor: the feature source (see ``base.FeatureExtractor``).
        layer_positions: which positions of the extractor's list of maps the method uses
            (``None``: its default). ``layers=`` is its deprecated old name.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        layer_positions: Optional[Sequence[int]] = None,
        batch_size: int = 32,
        sigma: float = GAUSSIAN_SIGMA,
        progress: bool = True,
        layers: Optional[Sequence[int]] = None,
    ) -> None:
        if not callable(extractor):
            raise TypeError(f"extractor must be callable (pixel_values -> list of [B, C, h, w] maps), got {type(extractor).__name__}")
        super().__init__(extractor, batch_size=batch_size, sigma=sigma, progress=progress)
        self.layer_positions = layer_positions_argument(layer_positions, layers, type(self).__name__)
        self.resolved_positions: Optional[list[int]] = None  # resolved at fit / first predict
        self.fitted_layout: Optional[list[tuple[int, int, int]]] = None  # (C, h, w) per used layer

    # -- image validation (the base class checks the rank, we check the channels) -------
    def fit(self, normal_images: ImageBatches) -> "FeatureMapDetector":
        return super().fit(self._checked_images(normal_images))

    def predict(self, images: ImageBatches) -> tuple[torch.Tensor, torch.Tensor]:
        return super().predict(self._checked_images(images))

    @staticmethod
    def _check_image_batch(batch: torch.Tensor) -> torch.Tensor:
        if batch.dim() == 4 and batch.shape[1] != 3:
            raise ValueError(
                f"images must be [N, 3, H, W] RGB pixel values, got {batch.shape[1]} channels "
                f"(shape {tuple(batch.shape)}): convert grayscale images to RGB first"
            )
        return batch

    def _checked_images(self, images: ImageBatches) -> ImageBatches:
        if images is None:
            raise ValueError(f"{type(self).__name__} needs images: pass a [N, 3, H, W] tensor or an iterable of batches")
        if isinstance(images, torch.Tensor):
            return self._check_image_batch(images)

        def checked(batches: Iterable) -> Iterator:
            for batch in batches:
                tensor = batch["pixel_values"] if isinstance(batch, dict) else batch
                if isinstance(tensor, torch.Tensor):
                    self._check_image_batch(tensor)
                yield batch

        return checked(images)

    def used_layer_positions(self) -> list[int]:
        """The positions in the extractor's list of maps this detector uses (resolved as at fit)."""
        if self.resolved_positions is not None:
            return list(self.resolved_positions)
        available = len(getattr(self.extractor, "layer_positions", []))
        return resolve_layer_positions(self.layer_positions, available, self.default_last_positions)

    # -- feature validation -------------------------------------------------------------
    def _select(self, features: Sequence[torch.Tensor], *, fitting: bool, check_grid: bool) -> list[torch.Tensor]:
        """Validate the extractor's output and return the used layers' maps.

        ``fitting=True`` records the layout; afterwards channels (and with ``check_grid``
        the grids) must match it, since a bank or per-position statistics built on one
        layout are meaningless for another.
        """
        if isinstance(features, torch.Tensor) or not isinstance(features, (list, tuple)):
            raise TypeError(f"the extractor must return a list of [B, C, h, w] maps, got {type(features).__name__}")
        if len(features) == 0:
            raise ValueError("the extractor returned no feature maps: it must return at least one layer")
        for i, fmap in enumerate(features):
            if not isinstance(fmap, torch.Tensor) or fmap.dim() != 4:
                shape = tuple(fmap.shape) if isinstance(fmap, torch.Tensor) else type(fmap).__name__
                raise ValueError(f"feature layer {i} must be a [B, C, h, w] map, got {shape}")
            if fmap.shape[0] != features[0].shape[0]:
                raise ValueError(f"feature layers disagree on the batch size: {[int(f.shape[0]) for f in features]}")
        self.resolved_positions = chosen_positions(
            None if fitting else self.resolved_positions, self.layer_positions, len(features), self.default_last_positions
        )
        used = [features[i] for i in self.resolved_positions]
        layout = [(int(f.shape[1]), int(f.shape[2]), int(f.shape[3])) for f in used]
        if fitting and self.fitted_layout is None:
            self.fitted_layout = layout
        elif self.fitted_layout is not None:
            for index, (now, then) in zip(self.resolved_positions, zip(layout, self.fitted_layout)):
                if now[0] != then[0] or (check_grid and now[1:] != then[1:]):
                    raise ValueError(
                        f"layer {index} has shape (C, h, w) = {now} but the detector was fitted on {then}: "
                        "use the same extractor and image size for fit and predict"
                    )
        return used


class FeatureNorm(FeatureMapDetector):
    """Anomaly score = L2 norm of each patch feature (ADPretrain's FeatureNorm baseline).

    Per used layer the score grid is ``||x||_2`` over channels (``[B, h_l, w_l]``); the base
    class upsamples each grid bilinearly to the image, averages layers, smooths with a
    Gaussian (sigma 4) and takes the max as the image score.

    Nothing is learned, so the detector is ready at construction: ``predict`` works
    without ``fit``, and ``fit(None)`` / ``fit(images)`` are accepted and do nothing (no
    features are extracted), so FeatureNorm drops into the same loop as the other
    detectors.

    Args:
        extractor: the feature source; use ``kind="pretrained"`` for the paper's
            FeatureNorm-dagger column, ``"backbone"`` for the raw-norm baseline.
        layer_positions: positions in the extractor's list of maps to use (default: all).
    """

    name = "featurenorm"

    def __init__(self, extractor: FeatureExtractor, *, layer_positions: Optional[Sequence[int]] = None, **kwargs) -> None:
        super().__init__(extractor, layer_positions=layer_positions, **kwargs)
        self.is_fitted = True

    def fit(self, normal_images: Optional[ImageBatches] = None) -> "FeatureNorm":
        """No-op (FeatureNorm learns nothing); accepts ``None`` or images for a uniform API."""
        return self

    def _fit(self, feature_batches: list[list[torch.Tensor]]) -> None:  # pragma: no cover - fit() skips it
        pass

    def _score_grids(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # features[l]: [B, C_l, h_l, w_l] -> grids[l]: [B, h_l, w_l]
        return [fmap.float().norm(dim=1) for fmap in self._select(features, fitting=False, check_grid=False)]
