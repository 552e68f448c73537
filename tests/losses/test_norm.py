"""The norm-oriented contrastive loss (Eqs. 4-6) against its slow transcription, every option."""

from __future__ import annotations

import math

import pytest
import torch

from adpretrain_hf.losses import effective_radius, feature_norm, norm_contrastive_loss
from adpretrain_hf.modeling.loss_options_adpretrain import ABNORMAL_MARGIN, HYPERSPHERE_RADIUS
from tests.losses.slow_references import F64, _assert_close, _grads, _norm_features, slow_norm


# --------------------------------------------------------------------------- norm loss

NORM_OPTION_SETS = [
    {},
    {"kind": "release"},
    {"detach": True},
    {"adaptive": True},
    {"hinge": True},
    {"push_inner": True},
    {"kind": "release", "detach": True, "adaptive": True, "hinge": True, "push_inner": True},
]
_KWARGS = {
    "kind": "norm_kind",
    "detach": "detach_exp_factor",
    "adaptive": "adaptive_radius",
    "hinge": "hinge_normals",
    "push_inner": "push_inner_normals",
}


@pytest.mark.parametrize("options", NORM_OPTION_SETS, ids=lambda o: "-".join(o) or "paper")
def test_norm_matches_slow_transcription(options):
    x, labels = _norm_features(10)
    fast = norm_contrastive_loss(x, labels, **{_KWARGS[k]: v for k, v in options.items()})
    slow = slow_norm(x, labels, **options)
    _assert_close(fast, slow)
    _assert_close(_grads(fast, (x,))[0], _grads(slow, (x,))[0])


@pytest.mark.parametrize("options", NORM_OPTION_SETS, ids=lambda o: "-".join(o) or "paper")
def test_subset_reduction_matches_slow_transcription(options):
    """``reduction="subset"`` (the release: each active part over its own features) against a
    part-by-part transcription; it differs from the mean over all features."""
    x, labels = _norm_features(11)
    kwargs = {_KWARGS[k]: v for k, v in options.items()}
    fast = norm_contrastive_loss(x, labels, reduction="subset", **kwargs)
    slow = slow_norm(x, labels, subset=True, **options)
    _assert_close(fast, slow)
    _assert_close(_grads(fast, (x,))[0], _grads(slow, (x,))[0])
    assert not torch.isclose(fast, norm_contrastive_loss(x, labels, reduction="all", **kwargs))


def test_subset_reduction_of_empty_parts_is_zero():
    x = torch.full((1, 3, 4), 0.1, dtype=F64)  # every normal inside the shell -> no active part
    n = feature_norm(x, "release")[0, 0].item()
    loss = norm_contrastive_loss(x, torch.zeros(1, 3, dtype=torch.bool), radius=n / 0.995, norm_kind="release",
                                 hinge_normals=True, push_inner_normals=True, reduction="subset")
    assert loss.item() == 0.0


def test_norm_branches_are_all_exercised():
    x, labels = _norm_features(10)
    n = feature_norm(x.detach(), "paper")
    normal_inside = (~labels & (n < 0.99 * HYPERSPHERE_RADIUS)).sum()
    normal_outside = (~labels & (n > HYPERSPHERE_RADIUS)).sum()
    abnormal_inside = (labels & (n <= HYPERSPHERE_RADIUS + ABNORMAL_MARGIN)).sum()
    abnormal_outside = (labels & (n > HYPERSPHERE_RADIUS + ABNORMAL_MARGIN)).sum()
    assert min(normal_inside, normal_outside, abnormal_inside, abnormal_outside) > 0


def test_feature_norm_kinds():
    x = torch.tensor([[3.0, 4.0], [1e-9, 0.0]], dtype=F64)
    paper, release = feature_norm(x, "paper"), feature_norm(x, "release")
    assert paper[0].item() == pytest.approx(math.sqrt(26) - 1, rel=1e-14)
    assert release[0].item() == pytest.approx(math.sqrt(6) - 1, rel=1e-14)
    assert paper[1].item() == pytest.approx(0.5e-18, rel=1e-6)  # no cancellation near 0


def test_norm_empty_label_cases_are_finite():
    x, _ = _norm_features(11)
    for labels in (torch.zeros(3, 8, dtype=torch.bool), torch.ones(3, 8, dtype=torch.bool)):
        for options in ({}, {"adaptive": True, "push_inner": True, "hinge": True}):
            fast = norm_contrastive_loss(x, labels, **{_KWARGS[k]: v for k, v in options.items()})
            _assert_close(fast, slow_norm(x, labels, **options))
            assert torch.isfinite(_grads(fast, (x,))[0]).all()


def test_norm_far_abnormal_feature_has_finite_gradient():
    # exp(n - r) of an abnormal feature overflows; it is not in Eq. (5)'s branch and must not leak NaN.
    x = torch.tensor([[[1000.0, 0.0], [0.1, 0.2]]], requires_grad=True)
    loss = norm_contrastive_loss(x, torch.tensor([[True, False]]))
    (grad,) = _grads(loss, (x,))
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad[0, 0].abs().sum() == 0


def test_effective_radius():
    n = torch.tensor([0.1, 0.3, 0.2, 5.0], dtype=F64)
    labels = torch.tensor([False, True, True, False])
    assert effective_radius(n, labels, 0.4, adaptive=False).item() == 0.4
    assert effective_radius(n, labels, 0.4, adaptive=True).item() == pytest.approx(0.18)
    assert effective_radius(n, torch.zeros(4, dtype=torch.bool), 0.4, adaptive=True).item() == 0.4


def test_norm_paper_gradient_magnitude_outside_sphere_is_larger():
    # Eq. (4)'s point: features outside the sphere get larger gradients than those inside.
    x = torch.tensor([[[0.1, 0.0], [2.0, 0.0]]], dtype=F64, requires_grad=True)
    loss = norm_contrastive_loss(x, torch.zeros(1, 2, dtype=torch.bool), reduction="sum")
    (grad,) = _grads(loss, (x,))
    assert grad[0, 1].norm() > 10 * grad[0, 0].norm() > 0
