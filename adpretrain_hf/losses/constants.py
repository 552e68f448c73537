"""Named constants of the ADPretrain losses that are not options (paper section 3.2, appendix E).

The loss options, their defaults and the paper / release forms live once, in
``adpretrain_hf.modeling.loss_options_adpretrain`` (``LossOptions``, read by both the config and
``ADPretrainLoss``; it must stay importable without this package for remote code). The losses
take them as arguments so that an ablation changes an option, never a number deep in the code.
"""

from __future__ import annotations

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
