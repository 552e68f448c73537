"""Named constants of the ADPretrain losses (paper section 3.2 and appendix E).

The values are the paper's defaults; the losses take them as keyword arguments so that an
ablation changes an argument, never a number deep in the code.
"""

from __future__ import annotations

TEMPERATURE = 0.15
"""tau in Eq. (2): temperature of the angle-oriented contrastive loss (appendix E, Tab. 8)."""

HYPERSPHERE_RADIUS = 0.4
"""r in Eqs. (3)-(5): radius of the normal hypersphere, measured with the pseudo-Huber norm
(sqrt(1 + 1) - 1 ~= 0.41, i.e. the unit sphere in Euclidean terms)."""

ABNORMAL_MARGIN = 0.75
"""Delta r in Eq. (5): abnormal features are pushed beyond r' = r + Delta r (appendix E, Tab. 9)."""

LOSS_WEIGHT = 1.0
"""lambda in Eq. (7): weight of the angle-oriented loss against the norm-oriented loss (Tab. 10)."""

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

NORM_KINDS = ("paper", "release")
"""``"paper"``: pseudo-Huber ``sqrt(||x||^2 + 1) - 1``; ``"release"``: ``sqrt(||x|| + 1) - 1``."""

ANCHOR_MODES = ("first", "both")
"""``"first"``: Eq. (7), anchors from view 1 only; ``"both"``: the release, anchors from both views."""

NORMALIZATIONS = ("paper", "release")
"""How ADPretrainLoss combines the per-layer terms: Eq. (7) or the release's plain sum."""
