"""The small surface every downstream detector shares.

A detector never sees a backbone or a projector: it receives a *feature extractor*, a
callable mapping preprocessed images ``[B, 3, H, W]`` to per-layer feature maps
``[B, C_l, h_l, w_l]``. "w/o vs w/ pretrained features" (the paper's Table 1) is then
one argument of the extractor (``features="backbone"|"pretrained"``), never two code
paths inside a detector.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Iterator, Optional, Protocol, Sequence, Union, runtime_checkable

import torch
from tqdm.auto import tqdm

from ..modeling.anomaly_map_adpretrain import GAUSSIAN_SIGMA, anomaly_map_from_grids

ImageBatches = Union[torch.Tensor, Iterable[torch.Tensor]]


@runtime_checkable
class FeatureExtractor(Protocol):
    """What detectors need from a feature source.

    Attributes:
        kind: ``"backbone"`` (the frozen backbone's own features) or ``"pretrained"``
            (ADPretrain's projected residual features); some methods (GLASS) pick
            defaults by it.
        image_size: ``(H, W)`` of the pixel values it expects; anomaly maps come back at it.
        device: where the features are computed.
    """

    kind: str
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
    """Base class: batching, progress bars and the shared map post-processing.

    Subclasses implement ``_fit(feature_batches)`` and ``_score_grids(features)``
    returning per-layer score grids ``[B, h_l, w_l]``; this class upsamples, averages,
    smooths (Gaussian sigma 4) and takes the max as the image score.
    """

    name = "detector"

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        batch_size: int = 32,
        sigma: float = GAUSSIAN_SIGMA,
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.extractor = extractor
        self.batch_size = batch_size
        self.sigma = sigma
        self.progress = progress
        self.is_fitted = False

    # -- public API -------------------------------------------------------------
    def fit(self, normal_images: ImageBatches) -> "Detector":
        """Learn the normal model from normal images ``[N, 3, H, W]`` (or batches of them)."""
        batches = self._extract_all(normal_images, desc=f"{self.name}: fit")
        self._fit(batches)
        self.is_fitted = True
        return self

    @torch.no_grad()
    def predict(self, images: ImageBatches) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps ``[N, H, W]`` and image scores ``[N]`` (float32, on the CPU)."""
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(normal_images) first")
        maps, scores = [], []
        for batch in tqdm(
            iter_image_batches(images, self.batch_size), desc=f"{self.name}: predict", disable=not self.progress, leave=False
        ):
            features = self.extractor(batch)
            grids = self._score_grids(features)
            batch_maps, batch_scores = anomaly_map_from_grids(grids, tuple(batch.shape[-2:]), self.sigma)
            maps.append(batch_maps.float().cpu())
            scores.append(self._image_scores(batch_maps, grids, features).float().cpu())
        return torch.cat(maps), torch.cat(scores)

    def export_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """``(settings, tensors)`` that rebuild this fitted detector's scoring: JSON-able
        settings and named tensors (saved as safetensors). Subclasses add theirs."""
        return {"sigma": float(self.sigma)}, {}

    def to_detector_model(self, feature_source: Optional[str] = None):
        """This fitted detector as an ``ADPretrainDetectorModel`` (a savable, loadable folder).

        The extractor must be a ``ModelFeatureExtractor``: its model is bundled (shared, not
        copied). ``feature_source`` records which checkpoint the features came from.
        """
        from ..deployment import detector_to_model

        return detector_to_model(self, feature_source=feature_source)

    # -- for subclasses ----------------------------------------------------------
    @abstractmethod
    def _fit(self, feature_batches: list[list[torch.Tensor]]) -> None:
        """``feature_batches[i][l]`` is layer ``l`` of batch ``i``: ``[b, C_l, h_l, w_l]``."""

    @abstractmethod
    def _score_grids(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-layer features of one batch -> per-layer score grids ``[b, h_l, w_l]``."""

    def _image_scores(self, maps: torch.Tensor, grids: list[torch.Tensor], features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Image score = max of the smoothed map (override for method-specific scores)."""
        return maps.flatten(1).amax(dim=1)

    # -- helpers -------------------------------------------------------------------
    @torch.no_grad()
    def _extract_all(self, images: ImageBatches, desc: str) -> list[list[torch.Tensor]]:
        return [
            self.extractor(batch)
            for batch in tqdm(iter_image_batches(images, self.batch_size), desc=desc, disable=not self.progress, leave=False)
        ]
