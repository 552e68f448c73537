"""FeatureNorm (the paper's training-free baseline) and the feature-map checks its siblings share.

FeatureNorm scores a patch by the L2 norm of its feature. With ADPretrain's projected
residual features the norm-oriented loss pushed normal features inside a small
hypersphere and anomalies outside it, so the norm alone is an anomaly score (paper,
Sec. 4.1 and Tab. 5); with raw backbone features the norm carries no such meaning, which
is the ~50 AUROC "FeatureNorm w/o" column of Tab. 1.

``FeatureMapDetector`` holds what PatchCore and PaDiM need as well: choosing layers from
the extractor's list, validating the maps it returns, and checking that predict sees the
layout fit saw. (These helpers would sit naturally in ``base.py``; they live here because
this module is the simplest detector and every training-free detector imports it.)

Layer choice is one rule for every detector: ``layers=`` (indices, negative from the end)
or, by default, the class's ``default_last_layers`` (its published default; ``None`` = all).
``FeatureMapDetector`` applies it itself; the trained detectors (which take the whole
extractor output) get it from the ``SelectsLayers`` mixin, which wraps their extractor in a
``LayerSelectingExtractor``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Iterator, Optional, Sequence

import torch

from ..modeling.anomaly_map_adpretrain import GAUSSIAN_SIGMA
from .base import Detector, FeatureExtractor, ImageBatches

__all__ = [
    "FeatureMapDetector",
    "FeatureNorm",
    "LayerSelectingExtractor",
    "SelectsLayers",
    "resolve_layers",
]


def resolve_layers(layers: Optional[Sequence[int]], num_layers: int, default_last: Optional[int] = None) -> list[int]:
    """Turn a user's layer choice into sorted-as-given non-negative indices.

    Args:
        layers: indices into the extractor's list (negative counts from the end), or
            ``None`` for the default.
        num_layers: how many maps the extractor returns.
        default_last: with ``layers=None``, take the last ``default_last`` layers (all of
            them when fewer exist); ``None`` takes all layers.
    """
    if layers is None:
        count = num_layers if default_last is None else min(default_last, num_layers)
        return list(range(num_layers - count, num_layers))
    if isinstance(layers, int) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty sequence of layer indices (e.g. [0, 2]), got {layers!r}")
    resolved = []
    for index in layers:
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"layer indices must be ints, got {index!r} in layers={list(layers)!r}")
        if not -num_layers <= index < num_layers:
            raise ValueError(
                f"layer index {index} is out of range: the extractor returns {num_layers} layers "
                f"(valid indices {-num_layers}..{num_layers - 1})"
            )
        resolved.append(index % num_layers)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layers={list(layers)!r} names the same layer twice: give each layer once")
    return resolved


def check_layers_argument(layers: Optional[Sequence[int]]) -> Optional[list[int]]:
    """``None`` or a non-empty sequence of layer indices (range-checked later, against the extractor)."""
    if layers is not None and (isinstance(layers, (int, str)) or len(layers) == 0):
        raise ValueError(f"layers must be a non-empty sequence of layer indices (e.g. [0, 2]) or None, got {layers!r}")
    return None if layers is None else list(layers)


class LayerSelectingExtractor:
    """An extractor returning only some of another extractor's layers.

    The indices are resolved (``resolve_layers``) at the first call, when the number of
    layers is known. ``kind``, ``image_size``, ``device`` and any other attribute come from
    the wrapped extractor.
    """

    def __init__(self, extractor: Any, layers: Optional[Sequence[int]], default_last: Optional[int]) -> None:
        self.inner = extractor
        self.layers = check_layers_argument(layers)
        self.default_last = default_last
        self.layer_indices: Optional[list[int]] = None

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, H, W]`` -> the chosen layers' maps ``[B, C_l, h_l, w_l]``."""
        features = self.inner(pixel_values)
        if isinstance(features, torch.Tensor) or not isinstance(features, (list, tuple)):
            raise TypeError(f"the extractor must return a list of [B, C, h, w] maps, got {type(features).__name__}")
        if self.layer_indices is None:
            self.layer_indices = resolve_layers(self.layers, len(features), self.default_last)
        elif max(self.layer_indices) >= len(features):
            raise ValueError(f"the extractor now returns {len(features)} layers, but layers {self.layer_indices} were chosen")
        return [features[i] for i in self.layer_indices]


class SelectsLayers:
    """Mixin giving a detector built on the whole extractor output ``layers=`` and a default.

    Put it first among the bases (``class CFLOW(SelectsLayers, TrainedDetector)``): it takes
    ``layers`` from the keyword arguments and hands the rest of the constructor a
    ``LayerSelectingExtractor`` over the chosen layers (``None``: the class's
    ``default_last_layers``, i.e. its published default).
    """

    #: with ``layers=None`` use the last this-many layers (``None``: all layers).
    default_last_layers: ClassVar[Optional[int]] = None

    def __init__(self, extractor: Any, *args: Any, layers: Optional[Sequence[int]] = None, **kwargs: Any) -> None:
        self.layers = check_layers_argument(layers)
        if self.layers is not None or self.default_last_layers is not None:
            extractor = LayerSelectingExtractor(extractor, self.layers, self.default_last_layers)
        super().__init__(extractor, *args, **kwargs)


class FeatureMapDetector(Detector):
    """A ``Detector`` that validates images and feature maps and remembers the fitted layout.

    Args:
        extractor: the feature source (see ``base.FeatureExtractor``).
        layers: which of the extractor's layers the method uses (``None``: its default).
    """

    #: with ``layers=None`` use the last this-many layers (``None``: all layers).
    default_last_layers: ClassVar[Optional[int]] = None

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        layers: Optional[Sequence[int]] = None,
        batch_size: int = 32,
        sigma: float = GAUSSIAN_SIGMA,
        progress: bool = True,
    ) -> None:
        if not callable(extractor):
            raise TypeError(f"extractor must be callable (pixel_values -> list of [B, C, h, w] maps), got {type(extractor).__name__}")
        super().__init__(extractor, batch_size=batch_size, sigma=sigma, progress=progress)
        self.layers = check_layers_argument(layers)
        self.layer_indices: Optional[list[int]] = None  # resolved at fit / first predict
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

    def model_layers(self) -> list[int]:
        """The extractor's layer indices this detector uses (resolved as at fit)."""
        if self.layer_indices is not None:
            return list(self.layer_indices)
        return resolve_layers(self.layers, len(getattr(self.extractor, "layers", [])), self.default_last_layers)

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
        if self.layer_indices is None or fitting:
            self.layer_indices = resolve_layers(self.layers, len(features), self.default_last_layers)
        elif max(self.layer_indices) >= len(features):
            raise ValueError(f"the extractor now returns {len(features)} layers, but layers {self.layer_indices} were fitted")
        used = [features[i] for i in self.layer_indices]
        layout = [(int(f.shape[1]), int(f.shape[2]), int(f.shape[3])) for f in used]
        if fitting and self.fitted_layout is None:
            self.fitted_layout = layout
        elif self.fitted_layout is not None:
            for index, (now, then) in zip(self.layer_indices, zip(layout, self.fitted_layout)):
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
        layers: layer indices to use (default: all).
    """

    name = "featurenorm"

    def __init__(self, extractor: FeatureExtractor, *, layers: Optional[Sequence[int]] = None, **kwargs) -> None:
        super().__init__(extractor, layers=layers, **kwargs)
        self.is_fitted = True

    def fit(self, normal_images: Optional[ImageBatches] = None) -> "FeatureNorm":
        """No-op (FeatureNorm learns nothing); accepts ``None`` or images for a uniform API."""
        return self

    def _fit(self, feature_batches: list[list[torch.Tensor]]) -> None:  # pragma: no cover - fit() skips it
        pass

    def _score_grids(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # features[l]: [B, C_l, h_l, w_l] -> grids[l]: [B, h_l, w_l]
        return [fmap.float().norm(dim=1) for fmap in self._select(features, fitting=False, check_grid=False)]
