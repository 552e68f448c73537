"""The losses' named constants (losses/constants.py).

The angle loss's block budget must give the chunk its docstring promises for the paper's batch.
The release-only 0.9 and 0.99 are checked against the release's formula in
tests/losses/test_norm.py (tests/losses/slow_references.py). The loss options themselves
(LossOptions) are tested in tests/modeling/test_loss_options_adpretrain.py.
"""

from __future__ import annotations

from adpretrain_hf.losses import constants
from adpretrain_hf.losses.angle import default_chunk_size

PAPER_BATCH_FEATURES = 32 * 256 * 2  # images x tokens (16 x 16 patches) x views: the negatives of one layer
MEBIBYTE = 2**20
FLOAT32_BYTES = 4


def test_block_budget_gives_the_documented_chunk_and_memory():
    assert constants.DEFAULT_MAX_BLOCK_ELEMENTS * FLOAT32_BYTES == 256 * MEBIBYTE
    chunk = default_chunk_size(PAPER_BATCH_FEATURES)
    assert chunk == 4096 and chunk * PAPER_BATCH_FEATURES <= constants.DEFAULT_MAX_BLOCK_ELEMENTS
    assert (chunk + 1) * PAPER_BATCH_FEATURES > constants.DEFAULT_MAX_BLOCK_ELEMENTS  # the largest that fits


def test_release_fractions_lie_inside_the_radius():
    """``r_eff = min(0.9 min_j n_j, r)`` and the inner shell ``[0.99 r, r]`` need fractions in (0, 1)."""
    assert 0.0 < constants.ADAPTIVE_RADIUS_FACTOR < 1.0
    assert 0.0 < constants.INNER_RADIUS_FRACTION < 1.0
