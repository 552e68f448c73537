"""ADPretrain's pretraining losses (paper Sec. 3.2): angle- and norm-oriented contrastive losses,
their Eq. (7) total over the tapped layers, and the center of the normal features.

The equations' building blocks (``angle_contrastive_loss``, ``norm_contrastive_loss``) default
to the paper's forms; ``ADPretrainLoss`` reads one ``LossOptions`` (defined once, with the
config's field names, in ``modeling/loss_options_adpretrain.py``; ``LossOptions()`` is the same
as ``ADPretrainConfig()``'s), and ``ADPretrainLoss.from_config(config)`` builds a model's loss.
``PAPER_LOSS_OPTIONS`` and ``RELEASE_LOSS_OPTIONS`` name the two recipes.
"""

from ..modeling.loss_options_adpretrain import (
    PAPER_LOSS_FORM,
    PAPER_LOSS_OPTIONS,
    RELEASE_LOSS_FORM,
    RELEASE_LOSS_OPTIONS,
    LossOptions,
)
from .angle import angle_contrastive_loss, default_chunk_size
from .center import CENTER_MOMENTUM, CenterEstimator, RunningCenter
from .constants import ADAPTIVE_RADIUS_FACTOR, DEFAULT_MAX_BLOCK_ELEMENTS, INNER_RADIUS_FRACTION
from .norm import effective_radius, feature_norm, norm_contrastive_loss
from .total import ADPretrainLoss, ADPretrainLossOutput

__all__ = [
    "ADAPTIVE_RADIUS_FACTOR",
    "CENTER_MOMENTUM",
    "DEFAULT_MAX_BLOCK_ELEMENTS",
    "INNER_RADIUS_FRACTION",
    "PAPER_LOSS_FORM",
    "PAPER_LOSS_OPTIONS",
    "RELEASE_LOSS_FORM",
    "RELEASE_LOSS_OPTIONS",
    "ADPretrainLoss",
    "ADPretrainLossOutput",
    "CenterEstimator",
    "LossOptions",
    "RunningCenter",
    "angle_contrastive_loss",
    "default_chunk_size",
    "effective_radius",
    "feature_norm",
    "norm_contrastive_loss",
]
