"""FeatureNorm (the paper's training-free baseline): the anomaly score is the feature's norm.

With ADPretrain's projected residual features the norm-oriented loss pushed normal features
inside a small hypersphere and anomalies outside it, so the norm alone is an anomaly score
(paper, Sec. 4.1 and Tab. 5); with raw backbone features the norm carries no such meaning,
which is the ~50 AUROC "FeatureNorm w/o" column of Tab. 1. The scoring is
``modeling.detectors_adpretrain.FeatureNormModule``.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..modeling.detectors_adpretrain import DEFAULT_VARIANT, FeatureNormModule
from .base import FeatureExtractor, FeatureMapDetector, ImageBatches

__all__ = ["FeatureNorm"]


class FeatureNorm(FeatureMapDetector):
    """Anomaly score = L2 norm of each patch feature (ADPretrain's FeatureNorm baseline).

    Per used layer the score grid is ``||x||_2`` over channels (``[B, h_l, w_l]``), upsampled
    to the image, averaged over layers, smoothed (sigma 4); the image score is the map's max.
    Nothing is learned, so the detector is ready at construction: ``fit(None)`` /
    ``fit(images)`` are accepted and do nothing, so FeatureNorm drops into the same loop as
    the other detectors.

    Args:
        extractor: the feature source; ``feature_kind="pretrained"`` for the paper's FeatureNorm-dagger
            column, ``"backbone"`` for the raw-norm baseline.
        layer_positions: positions in the extractor's list of maps to use (default: all).
        variant: ``"package"`` (default; ``||x||``, ``align_corners=False``) or ``"release"`` (the released
            code: ``sqrt(||x|| + 1) - 1``, ``align_corners=True``, smoothed in float64).
    """

    name = "featurenorm"

    def __init__(self, extractor: FeatureExtractor, *, layer_positions: Optional[Sequence[int]] = None,
                 variant: str = DEFAULT_VARIANT, **kwargs) -> None:
        super().__init__(extractor, layer_positions=layer_positions, **kwargs)
        self.module = FeatureNormModule(sigma=self.sigma, variant=variant)
        self.variant = variant
        self.is_fitted = True

    def fit(self, normal_images: Optional[ImageBatches] = None) -> "FeatureNorm":
        """No-op (FeatureNorm learns nothing); accepts ``None`` or images for a uniform API."""
        return self

    def _fit(self, feature_batches: list[list]) -> None:  # pragma: no cover - fit() skips it
        pass
