"""LossOptions: the paper's numbers and the release's form as defaults, one validation, frozen.

The expected values are written out here from the paper (appendix E) and the release
(training/configs/release.yaml), not read from the module.
"""

from __future__ import annotations

import dataclasses

import pytest

from adpretrain_hf.modeling.loss_options_adpretrain import (
    PAPER_LOSS_FORM,
    PAPER_LOSS_OPTIONS,
    RELEASE_LOSS_FORM,
    RELEASE_LOSS_OPTIONS,
    LossOptions,
)

RELEASE_DEFAULTS = {
    "angle_temperature": 0.15, "hypersphere_radius": 0.4, "abnormal_margin": 0.75, "loss_weight": 1.0,
    "norm_loss_weight": 1.0, "norm_kind": "release", "angle_anchors": "both", "loss_normalization": "release",
    "detach_exp_factor": True, "adaptive_radius": True, "hinge_normals": True, "push_inner_normals": True,
    "norm_loss_reduction": "subset",
}
PAPER_FORM = {
    "norm_kind": "paper", "angle_anchors": "first", "loss_normalization": "paper", "detach_exp_factor": False,
    "adaptive_radius": False, "hinge_normals": False, "push_inner_normals": False, "norm_loss_reduction": "all",
}


def test_defaults_are_the_papers_numbers_and_the_releases_form():
    assert dataclasses.asdict(LossOptions()) == RELEASE_DEFAULTS
    assert RELEASE_LOSS_OPTIONS == LossOptions()
    assert dataclasses.asdict(PAPER_LOSS_OPTIONS) == {**RELEASE_DEFAULTS, **PAPER_FORM}


def test_pick_takes_the_option_fields_of_a_form_and_ignores_the_rest():
    assert set(PAPER_LOSS_FORM) - set(LossOptions.names()) == {"center_mode", "patch_label_rule", "center_estimation"}
    assert set(PAPER_LOSS_FORM) == set(RELEASE_LOSS_FORM)  # the two forms set the same fields
    assert LossOptions.pick({"hypersphere_radius": 0.3, "center_mode": "residual"}) == LossOptions(hypersphere_radius=0.3)


def test_options_are_frozen_switches_are_bools_and_numbers_stay_as_given():
    options = LossOptions(loss_weight=2, detach_exp_factor=0)
    assert options.loss_weight == 2 and isinstance(options.loss_weight, int)  # config.json keeps what was written
    assert options.detach_exp_factor is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.loss_weight = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "field,value,error,message",
    [
        ("angle_temperature", 0.0, ValueError, r"angle_temperature=0.0 is invalid: pass a finite number > 0"),
        ("hypersphere_radius", -1.0, ValueError, r"hypersphere_radius=-1.0 is invalid"),
        ("abnormal_margin", float("nan"), ValueError, r"abnormal_margin=nan is invalid: pass a finite number >= 0"),
        ("loss_weight", float("inf"), ValueError, r"loss_weight=inf is invalid"),
        ("norm_loss_weight", "1", TypeError, r"norm_loss_weight must be a number, got str"),
        ("angle_temperature", True, TypeError, r"angle_temperature must be a number, got bool"),
        ("norm_kind", "huber", ValueError, r"norm_kind='huber' is not supported: pass one of 'paper', 'release'"),
        ("angle_anchors", "all", ValueError, r"angle_anchors='all' is not supported"),
        ("loss_normalization", "mine", ValueError, r"loss_normalization='mine' is not supported"),
        ("norm_loss_reduction", "mean", ValueError, r"norm_loss_reduction='mean' is not supported: pass one of 'subset', 'all'"),
    ],
)
def test_bad_options_name_the_field_and_the_fix(field, value, error, message):
    with pytest.raises(error, match=message):
        LossOptions(**{field: value})


def test_zero_weights_on_both_terms_are_rejected_but_one_zero_is_an_ablation():
    with pytest.raises(ValueError, match="nothing would be trained"):
        LossOptions(loss_weight=0.0, norm_loss_weight=0.0)
    assert LossOptions(loss_weight=0.0).norm_loss_weight == 1.0  # Table 2, ExpID 2.6
    assert LossOptions(norm_loss_weight=0.0).loss_weight == 1.0  # ExpID 2.5
