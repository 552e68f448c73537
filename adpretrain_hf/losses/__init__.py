"""ADPretrain's pretraining losses (paper Sec. 3.2): angle- and norm-oriented contrastive losses,
their Eq. (7) total over the tapped layers, and the center of the normal features.

Defaults follow the paper; the released code's variants are options
(``ADPretrainLoss(**RELEASE_LOSS_OPTIONS)``), documented where they differ.
"""

from .angle import angle_contrastive_loss, default_chunk_size
from .center import CENTER_MODES, CENTER_MOMENTUM, CenterEstimator, RunningCenter
from .constants import (
    ABNORMAL_MARGIN,
    ADAPTIVE_RADIUS_FACTOR,
    ANCHOR_MODES,
    DEFAULT_MAX_BLOCK_ELEMENTS,
    HYPERSPHERE_RADIUS,
    INNER_RADIUS_FRACTION,
    LOSS_WEIGHT,
    NORM_KINDS,
    NORMALIZATIONS,
    TEMPERATURE,
)
from .norm import effective_radius, feature_norm, norm_contrastive_loss
from .total import RELEASE_LOSS_OPTIONS, ADPretrainLoss, ADPretrainLossOutput

__all__ = [
    "ABNORMAL_MARGIN",
    "ADAPTIVE_RADIUS_FACTOR",
    "ANCHOR_MODES",
    "CENTER_MODES",
    "CENTER_MOMENTUM",
    "DEFAULT_MAX_BLOCK_ELEMENTS",
    "HYPERSPHERE_RADIUS",
    "INNER_RADIUS_FRACTION",
    "LOSS_WEIGHT",
    "NORMALIZATIONS",
    "NORM_KINDS",
    "RELEASE_LOSS_OPTIONS",
    "TEMPERATURE",
    "ADPretrainLoss",
    "ADPretrainLossOutput",
    "CenterEstimator",
    "RunningCenter",
    "angle_contrastive_loss",
    "default_chunk_size",
    "effective_radius",
    "feature_norm",
    "norm_contrastive_loss",
]
