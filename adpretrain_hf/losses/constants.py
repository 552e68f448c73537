"""Named constants of the ADPretrain losses (paper section 3.2 and appendix E).

The loss hyperparameters and the default loss form are defined ONCE, next to the config
fields that carry them (``adpretrain_hf.modeling.configuration_adpretrain``, which must stay
importable without this package for remote code); they are re-exported here. The losses take
them as keyword arguments so that an ablation changes an argument, never a number deep in
the code.
"""

from __future__ import annotations

# Re-exported. NORM_KINDS: "paper" sqrt(||x||^2 + 1) - 1 | "release" sqrt(||x|| + 1) - 1.
# ANCHOR_MODES: "first" (Eq. 7, view-1 anchors) | "both" (release). NORMALIZATIONS: how
# ADPretrainLoss combines the per-layer terms, Eq. (7) | the release's plain sum.
from adpretrain_hf.modeling.configuration_adpretrain import (  # noqa: F401
    ABNORMAL_MARGIN,
    DEFAULT_LOSS_FORM,
    HYPERSPHERE_RADIUS,
    LOSS_ARGUMENT_NAMES,
    LOSS_WEIGHT,
    NORM_LOSS_WEIGHT,
    NORM_KINDS,
    PAPER_LOSS_FORM,
    RELEASE_LOSS_FORM,
    TEMPERATURE,
)
from adpretrain_hf.modeling.configuration_adpretrain import ANGLE_ANCHORS as ANCHOR_MODES  # noqa: F401
from adpretrain_hf.modeling.configuration_adpretrain import LOSS_NORMALIZATIONS as NORMALIZATIONS  # noqa: F401
from adpretrain_hf.modeling.configuration_adpretrain import NORM_LOSS_REDUCTIONS as NORM_REDUCTIONS  # noqa: F401

ADAPTIVE_RADIUS_FACTOR = 0.9
"""Release only: with ``adaptive_radius`` the radius is capped at this fraction of the smallest
anomalous norm in the batch, ``r = min(0.9 * min_j n_j, r)``."""

INNER_RADIUS_FRACTION = 0.99
"""Release only: with ``push_inner_normals`` normal features whose norm is below this fraction of
the (effective) radius are pushed outward, onto the shell ``[0.99 r, r]``."""

DEFAULT_MAX_BLOCK_ELEMENTS = 4096 * 16384
"""Default budget of the angle loss's similarity block (anchors x negatives), in elements.

``4096 x 16384`` = 2**26 elements (256 MiB in float32): for the paper's batch (32 images x
256 tokens x 2 views = 16,384 features per layer) this is a chunk of 4,096 anchors."""
