"""The small surface every downstream detector shares: images in, fitted scoring module out.

A detector never sees a backbone or a projector: it receives a *feature extractor*, a
callable mapping preprocessed images ``[B, 3, H, W]`` to per-layer feature maps
``[B, C_l, h_l, w_l]``. "w/o vs w/ pretrained features" (the paper's Table 1) is then
one argument of the extractor (its ``feature_kind``), never two code paths inside a detector.

A :class:`Detector` batches images through the extractor, checks the maps and fits its
``module`` (a :class:`~adpretrain_hf.modeling.detector_module_adpretrain.DetectorModule`,
fitted state in buffers); ``predict`` calls that module's ``forward``, the one scoring path
the deployed folder (``ADPretrainDetectorModel``) and the ONNX export share.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Iterable, Iterator, Optional, Protocol, Sequence, Union, runtime_checkable

import torch
from tqdm.auto import tqdm

from ..modeling.anomaly_map_adpretrain import GAUSSIAN_SIGMA
from ..modeling.detector_module_adpretrain import DetectorModule, check_finite
from .layers import check_layer_positions_argument, chosen_positions, resolve_layer_positions

ImageBatches = Union[torch.Tensor, Iterable[torch.Tensor]]


@runtime_checkable
class FeatureExtractor(Protocol):
    """What detectors need from a feature source.

    Attributes:
        feature_kind: ``"backbone"`` (the frozen backbone's own features) or ``"pretrained"``
            (ADPretrain's projected residual features); some methods (GLASS) pick
            defaults by it.
        image_size: ``(H, W)`` of the pixel values it expects; anomaly maps come back at it.
        device: where the features are computed.
    """

    feature_kind: str
    image_size: tuple[int, int]
    device: torch.device

    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """``pixel_values [B, 3, H, W]`` -> per-layer maps ``[B, C_l, h_l, w_l]`` (float32)."""
        ...


def iter_image_batches(images: ImageBatches, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield ``[b, 3, H, W]`` batches from a tensor ``[N, 3, H, W]`` or an iterable of batches."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be [N, 3, H, W] pixel values, got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("no images given: pass at least one image")
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
        return
    seen = False
    for batch in images:
        if isinstance(batch, dict):
            batch = batch["pixel_values"]
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
            raise TypeError("each batch must be a [b, 3, H, W] tensor (or a dict with 'pixel_values')")
        seen = True
        yield batch
    if not seen:
        raise ValueError("no images given: the iterable of batches was empty")


class Detector(ABC):
    """Base class: batching, progress bars, the fitted ``module`` and its one scoring path.

    Subclasses implement ``_fit(feature_batches)`` (fill ``self.module``'s fitted state) and
    ``_used_features(features)`` (check one batch's maps and return those the module scores).
    """

    name = "detector"
    #: the published layer default: with ``layer_positions=None`` use the last this-many positions (``None``: all)
    default_last_positions: ClassVar[Optional[int]] = None

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        batch_size: int = 32,
        sigma: float = GAUSSIAN_SIGMA,
        progress: bool = True,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.extractor = extractor
        self.batch_size = batch_size
        self.sigma = sigma
        self.progress = progress
        self.is_fitted = False
        self.module: Optional[DetectorModule] = None

    # -- public API -------------------------------------------------------------
    def fit(self, normal_images: ImageBatches) -> "Detector":
        """Learn the normal model from normal images ``[N, 3, H, W]`` (or batches of them)."""
        batches = self._extract_all(normal_images, desc=f"{self.name}: fit")
        self._fit(batches)
        self.module.check_fitted()
        self.is_fitted = True
        return self

    @torch.no_grad()
    def predict(self, images: ImageBatches) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps ``[N, H, W]`` and image scores ``[N]`` (float32, on the CPU)."""
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(normal_images) first")
        maps, scores = [], []
        for batch in tqdm(self._batches(images), desc=f"{self.name}: predict", disable=not self.progress, leave=False):
            batch_maps, batch_scores = self.module(self._used_features(self.extractor(batch)), tuple(batch.shape[-2:]))
            maps.append(batch_maps.float().cpu())
            scores.append(batch_scores.float().cpu())
        return torch.cat(maps), torch.cat(scores)

    # -- for subclasses ----------------------------------------------------------
    @abstractmethod
    def _fit(self, feature_batches: list[list[torch.Tensor]]) -> None:
        """``feature_batches[i][l]`` is layer ``l`` of batch ``i``: ``[b, C_l, h_l, w_l]``."""

    @abstractmethod
    def _used_features(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The extractor's maps of one batch, checked against the fitted layout -> the maps the module scores."""

    def _check_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """One ``[b, 3, H, W]`` batch checked against the detector's input contract (default: as given)."""
        return batch

    # -- helpers -------------------------------------------------------------------
    def _batches(self, images: ImageBatches) -> Iterator[torch.Tensor]:
        """:func:`iter_image_batches` of ``images``, each batch through :meth:`_check_batch` (lazily)."""
        if images is None:
            raise ValueError(f"{type(self).__name__} needs images: pass a [N, 3, H, W] tensor or an iterable of batches")
        return (self._check_batch(batch) for batch in iter_image_batches(images, self.batch_size))

    @torch.no_grad()
    def _extract_all(self, images: ImageBatches, desc: str) -> list[list[torch.Tensor]]:
        batches = []
        for batch in tqdm(self._batches(images), desc=desc, disable=not self.progress, leave=False):
            features = self.extractor(batch)
            if isinstance(features, (list, tuple)):
                for layer, fmap in enumerate(features):
                    if isinstance(fmap, torch.Tensor):
                        check_finite(fmap, f"the training features (layer {layer})", "check the normal images and the feature model")
            batches.append(features)
        return batches


class FeatureMapDetector(Detector):
    """A ``Detector`` that validates images and feature maps and remembers the fitted layout.

    Args:
        extractor: the feature source (see ``FeatureExtractor``).
        layer_positions: which positions of the extractor's list of maps the method uses
            (``None``: its default).
    """

    #: whether predict checks the grids too (per-position statistics), not only the channels
    checks_grid = False

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        layer_positions: Optional[Sequence[int]] = None,
        batch_size: int = 32,
        sigma: float = GAUSSIAN_SIGMA,
        progress: bool = True,
    ) -> None:
        if not callable(extractor):
            raise TypeError(f"extractor must be callable (pixel_values -> list of [B, C, h, w] maps), got {type(extractor).__name__}")
        super().__init__(extractor, batch_size=batch_size, sigma=sigma, progress=progress)
        self.layer_positions = check_layer_positions_argument(layer_positions)
        self.resolved_positions: Optional[list[int]] = None  # resolved at fit / first predict
        self.fitted_layout: Optional[list[tuple[int, int, int]]] = None  # (C, h, w) per used layer

    def _check_batch(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[1] != 3:
            raise ValueError(
                f"images must be [N, 3, H, W] RGB pixel values, got {batch.shape[1]} channels "
                f"(shape {tuple(batch.shape)}): convert grayscale images to RGB first"
            )
        return batch

    def used_layer_positions(self) -> list[int]:
        """The positions in the extractor's list of maps this detector uses (resolved as at fit)."""
        if self.resolved_positions is not None:
            return list(self.resolved_positions)
        available = len(getattr(self.extractor, "layer_positions", []))
        return resolve_layer_positions(self.layer_positions, available, self.default_last_positions)

    def _used_features(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self._select(features, fitting=False, check_grid=self.checks_grid)

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
