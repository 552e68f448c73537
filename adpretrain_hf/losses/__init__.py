"""ADPretrain's pretraining losses (paper Sec. 3.2): angle- and norm-oriented contrastive losses,
their Eq. (7) total over the tapped layers, and the center of the normal features.

The equations' building blocks (``angle_contrastive_loss``, ``norm_contrastive_loss``) default
to the paper's forms; ``ADPretrainLoss`` defaults to ``DEFAULT_LOSS_FORM``, the same as
``ADPretrainConfig()`` (one place: ``modeling/configuration_adpretrain.py``), and
``ADPretrainLoss.from_config(config)`` builds a model's loss. ``PAPER_LOSS_OPTIONS`` and
``RELEASE_LOSS_OPTIONS`` name the two recipes.
"""

from .angle import angle_contrastive_loss, default_chunk_size
from .center import CENTER_MODES, CENTER_MOMENTUM, CenterEstimator, RunningCenter
from .constants import (
    ABNORMAL_MARGIN,
    ADAPTIVE_RADIUS_FACTOR,
    ANCHOR_MODES,
    DEFAULT_LOSS_FORM,
    DEFAULT_MAX_BLOCK_ELEMENTS,
    HYPERSPHERE_RADIUS,
    INNER_RADIUS_FRACTION,
    LOSS_WEIGHT,
    NORM_LOSS_WEIGHT,
    NORM_KINDS,
    NORM_REDUCTIONS,
    NORMALIZATIONS,
    PAPER_LOSS_FORM,
    RELEASE_LOSS_FORM,
    TEMPERATURE,
)
from .norm import effective_radius, feature_norm, norm_contrastive_loss
from .total import PAPER_LOSS_OPTIONS, RELEASE_LOSS_OPTIONS, ADPretrainLoss, ADPretrainLossOutput, loss_options

__all__ = [
    "ABNORMAL_MARGIN",
    "ADAPTIVE_RADIUS_FACTOR",
    "ANCHOR_MODES",
    "CENTER_MODES",
    "CENTER_MOMENTUM",
    "DEFAULT_LOSS_FORM",
    "DEFAULT_MAX_BLOCK_ELEMENTS",
    "HYPERSPHERE_RADIUS",
    "INNER_RADIUS_FRACTION",
    "LOSS_WEIGHT",
    "NORM_LOSS_WEIGHT",
    "NORMALIZATIONS",
    "NORM_KINDS",
    "NORM_REDUCTIONS",
    "PAPER_LOSS_FORM",
    "PAPER_LOSS_OPTIONS",
    "RELEASE_LOSS_FORM",
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
    "loss_options",
    "norm_contrastive_loss",
]
