"""The losses' named constants (losses/constants.py).

The loss hyperparameters live once, in the model config module: here they must be the very same
objects (an ablation that edits one edits both), every config-to-loss keyword must be a real
``ADPretrainLoss`` argument with these defaults, and the angle loss's block budget must give the
chunk its docstring promises for the paper's batch. The release-only 0.9 and 0.99 are checked
against the release's formula in tests/losses/test_norm.py (tests/losses/slow_references.py).
"""

from __future__ import annotations

import inspect

import adpretrain_hf.modeling.configuration_adpretrain as config_module
from adpretrain_hf.losses import ADPretrainLoss, constants
from adpretrain_hf.losses.angle import default_chunk_size

PAPER_BATCH_FEATURES = 32 * 256 * 2  # images x tokens (16 x 16 patches) x views: the negatives of one layer
MEBIBYTE = 2**20
FLOAT32_BYTES = 4


def test_reexports_are_the_config_modules_objects():
    for name in ("ABNORMAL_MARGIN", "DEFAULT_LOSS_FORM", "HYPERSPHERE_RADIUS", "LOSS_ARGUMENT_NAMES", "LOSS_WEIGHT",
                 "NORM_LOSS_WEIGHT", "NORM_KINDS", "PAPER_LOSS_FORM", "RELEASE_LOSS_FORM", "TEMPERATURE"):
        assert getattr(constants, name) is getattr(config_module, name), name
    assert constants.ANCHOR_MODES is config_module.ANGLE_ANCHORS
    assert constants.NORMALIZATIONS is config_module.LOSS_NORMALIZATIONS


def test_every_loss_argument_name_is_a_loss_keyword_with_the_default_form():
    parameters = inspect.signature(ADPretrainLoss.__init__).parameters
    defaults = {"angle_temperature": constants.TEMPERATURE, "hypersphere_radius": constants.HYPERSPHERE_RADIUS,
                "abnormal_margin": constants.ABNORMAL_MARGIN, "loss_weight": constants.LOSS_WEIGHT,
                "norm_loss_weight": constants.NORM_LOSS_WEIGHT, **constants.DEFAULT_LOSS_FORM}
    for field, keyword in constants.LOSS_ARGUMENT_NAMES.items():
        assert keyword in parameters, f"{field} -> {keyword} is not an ADPretrainLoss argument"
        assert parameters[keyword].default == defaults[field], field
    assert set(constants.PAPER_LOSS_FORM) == set(constants.RELEASE_LOSS_FORM)  # the two forms set the same options
    assert constants.DEFAULT_LOSS_FORM["norm_kind"] in constants.NORM_KINDS
    assert constants.DEFAULT_LOSS_FORM["angle_anchors"] in constants.ANCHOR_MODES
    assert constants.DEFAULT_LOSS_FORM["loss_normalization"] in constants.NORMALIZATIONS


def test_block_budget_gives_the_documented_chunk_and_memory():
    assert constants.DEFAULT_MAX_BLOCK_ELEMENTS * FLOAT32_BYTES == 256 * MEBIBYTE
    chunk = default_chunk_size(PAPER_BATCH_FEATURES)
    assert chunk == 4096 and chunk * PAPER_BATCH_FEATURES <= constants.DEFAULT_MAX_BLOCK_ELEMENTS
    assert (chunk + 1) * PAPER_BATCH_FEATURES > constants.DEFAULT_MAX_BLOCK_ELEMENTS  # the largest that fits


def test_release_fractions_lie_inside_the_radius():
    """``r_eff = min(0.9 min_j n_j, r)`` and the inner shell ``[0.99 r, r]`` need fractions in (0, 1)."""
    assert 0.0 < constants.ADAPTIVE_RADIUS_FACTOR < 1.0
    assert 0.0 < constants.INNER_RADIUS_FRACTION < 1.0
