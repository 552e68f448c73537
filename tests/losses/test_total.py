"""ADPretrainLoss (Eq. 7 and the release's sum) against slow transcriptions; the losses' input errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from adpretrain_hf.losses import (
    PAPER_LOSS_OPTIONS,
    RELEASE_LOSS_OPTIONS,
    ADPretrainLoss,
    LossOptions,
    angle_contrastive_loss,
    norm_contrastive_loss,
)
from adpretrain_hf.modeling.loss_options_adpretrain import TEMPERATURE
from tests.losses.slow_references import (
    _assert_close,
    _grads,
    _views,
    slow_angle,
    slow_norm,
    slow_total_eq7,
    slow_total_release,
)


# --------------------------------------------------------------------------- total loss


def _layers(seed, requires_grad=True):
    """Two layers with different token counts and widths."""
    a = _views(seed, batch=2, tokens=6, dim=5, requires_grad=requires_grad)
    b = _views(seed + 100, batch=2, tokens=4, dim=3, requires_grad=requires_grad)
    return [a[0], b[0]], [a[1], b[1]], [a[2], b[2]], [a[3], b[3]]


@pytest.mark.parametrize("anchors", ["first", "both"])
def test_total_paper_matches_eq7_transcription(anchors):
    v1, v2, labels, centers = _layers(20)
    loss_fn = ADPretrainLoss(replace(PAPER_LOSS_OPTIONS, angle_anchors=anchors, loss_weight=0.7), chunk_size=4)
    out = loss_fn(v1, v2, labels, centers)
    slow = slow_total_eq7(v1, v2, labels, centers, 0.7, TEMPERATURE, anchors)
    _assert_close(out.loss, slow)
    params = [*v1, *v2, *centers]
    for gf, gs in zip(_grads(out.loss, params), _grads(slow, params)):
        _assert_close(gf, gs)
    torch.testing.assert_close(out.loss.detach(), sum(out.layer_loss))
    assert not any(t.requires_grad for t in (*out.angle, *out.norm, *out.layer_loss))
    for layer in range(2):
        _assert_close(out.angle[layer], slow_angle(v1[layer], v2[layer], labels[layer], centers[layer], TEMPERATURE, anchors))
        both = (slow_norm(v1[layer], labels[layer]) + slow_norm(v2[layer], labels[layer])) / 2
        _assert_close(out.norm[layer], both)
        assert out.num_anomalous[layer].item() == labels[layer].sum().item()


def test_total_release_options_match_release_sum():
    v1, v2, labels, centers = _layers(21)
    out = ADPretrainLoss(RELEASE_LOSS_OPTIONS)(v1, v2, labels, centers)
    release_norm = {"kind": "release", "detach": True, "adaptive": True, "hinge": True, "push_inner": True, "subset": True}
    slow = slow_total_release(v1, v2, labels, centers, 1.0, TEMPERATURE, "both", **release_norm)
    _assert_close(out.loss, slow)
    params = [*v1, *v2, *centers]
    for gf, gs in zip(_grads(out.loss, params), _grads(slow, params)):
        _assert_close(gf, gs)


def test_release_normalization_is_twice_eq7_for_first_view_anchors():
    v1, v2, labels, centers = _layers(22, requires_grad=False)
    paper = ADPretrainLoss(PAPER_LOSS_OPTIONS)(v1, v2, labels, centers).loss
    release = ADPretrainLoss(replace(PAPER_LOSS_OPTIONS, loss_normalization="release"))(v1, v2, labels, centers).loss
    _assert_close(release, 2 * paper, rel=1e-12)


def test_total_without_anomalies_is_norm_only_and_finite():
    v1, v2, labels, centers = _layers(23)
    labels = [torch.zeros_like(lab) for lab in labels]
    out = ADPretrainLoss(PAPER_LOSS_OPTIONS)(v1, v2, labels, centers)
    assert all(a.item() == 0.0 for a in out.angle)
    _assert_close(out.loss, sum((slow_norm(a, lab) + slow_norm(b, lab)) / 2 for a, b, lab in zip(v1, v2, labels)))
    assert all(torch.isfinite(g).all() for g in _grads(out.loss, [*v1, *v2]))


def test_total_norm_labels_override_and_no_centers():
    v1, v2, labels, _ = _layers(24)
    norm_labels = [torch.zeros_like(lab) for lab in labels]
    out = ADPretrainLoss(PAPER_LOSS_OPTIONS)(v1, v2, labels, None, norm_labels=norm_labels)
    expected = 0.0
    for a, b, lab, nlab in zip(v1, v2, labels, norm_labels):
        expected = expected + slow_angle(a, b, lab, None) / 2 + (slow_norm(a, nlab) + slow_norm(b, nlab)) / 2
    _assert_close(out.loss, expected)


# --------------------------------------------------------------------------- input errors


def test_bad_inputs_raise_clear_errors():
    v1, v2, labels, center = _views(30, requires_grad=False)
    with pytest.raises(ValueError, match="differ"):
        angle_contrastive_loss(v1, v2[:, :5], labels, center)
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        angle_contrastive_loss(v1[0], v2[0], labels, center)
    with pytest.raises(TypeError, match="labels > 0.5"):
        angle_contrastive_loss(v1, v2, labels.double(), center)
    with pytest.raises(ValueError, match="one label per patch"):
        angle_contrastive_loss(v1, v2, labels[:, :3], center)
    with pytest.raises(ValueError, match="other than 0 and 1"):
        angle_contrastive_loss(v1, v2, labels.long() * 2, center)
    with pytest.raises(ValueError, match=r"expected \[5\]"):
        angle_contrastive_loss(v1, v2, labels, center[:3])
    with pytest.raises(ValueError, match="'first', 'both'"):
        angle_contrastive_loss(v1, v2, labels, center, anchors="second")
    with pytest.raises(ValueError, match="temperature"):
        angle_contrastive_loss(v1, v2, labels, center, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        angle_contrastive_loss(v1, v2, labels, center, chunk_size=0)
    with pytest.raises(TypeError, match="floating-point"):
        angle_contrastive_loss(v1.long(), v2.long(), labels, center)
    with pytest.raises(ValueError, match="norm_kind"):
        norm_contrastive_loss(v1, labels, norm_kind="huber")
    with pytest.raises(ValueError, match="hypersphere_radius"):
        LossOptions(hypersphere_radius=-1.0)
    with pytest.raises(ValueError, match="loss_normalization"):
        LossOptions(loss_normalization="mine")
    with pytest.raises(TypeError, match="LossOptions"):
        ADPretrainLoss({"hypersphere_radius": 0.3})
    with pytest.raises(TypeError, match=r"wrap a single layer"):
        ADPretrainLoss()(v1, v2, labels, [center])
    with pytest.raises(ValueError, match="centers has 2"):
        ADPretrainLoss()([v1], [v2], [labels], [center, center])


@pytest.mark.parametrize("normalization", ["paper", "release"])
def test_single_loss_ablations_keep_only_their_term(normalization):
    """Table 2 (a) ExpID 2.5 / 2.6: norm_loss_weight=0 is the angle loss alone, loss_weight=0 the norm loss alone."""
    v1, v2, labels, centers = _layers(31)
    both = ADPretrainLoss(LossOptions(loss_normalization=normalization), chunk_size=4)(v1, v2, labels, centers)
    angle_only = ADPretrainLoss(LossOptions(loss_normalization=normalization, norm_loss_weight=0.0), chunk_size=4)(v1, v2, labels, centers)
    norm_only = ADPretrainLoss(LossOptions(loss_normalization=normalization, loss_weight=0.0), chunk_size=4)(v1, v2, labels, centers)
    # Each single-term loss plus the other equals the full loss, and each equals its own term's
    # reported value combined as the normalization says (norm terms: mean of the two views).
    _assert_close(angle_only.loss + norm_only.loss, both.loss)
    norm_scale = 1.0 if normalization == "paper" else 2.0
    _assert_close(norm_only.loss, norm_scale * sum(both.norm))
    with pytest.raises(ValueError, match="nothing would be trained"):
        LossOptions(loss_weight=0.0, norm_loss_weight=0.0)
