"""The angle-oriented contrastive loss (Eqs. 2-3) against its slow transcription: values, gradients, chunking."""

from __future__ import annotations

import pytest
import torch

from adpretrain_hf.losses import angle_contrastive_loss, default_chunk_size
from adpretrain_hf.modeling.loss_options_adpretrain import TEMPERATURE
from tests.losses.slow_references import (
    F64,
    _assert_close,
    _grads,
    _views,
    slow_angle,
    slow_angle_terms,
)


# --------------------------------------------------------------------------- angle loss


@pytest.mark.parametrize("anchors", ["first", "both"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_angle_matches_slow_transcription(anchors, seed):
    v1, v2, labels, center = _views(seed)
    fast = angle_contrastive_loss(v1, v2, labels, center, anchors=anchors, chunk_size=5)
    slow = slow_angle(v1, v2, labels, center, TEMPERATURE, anchors)
    _assert_close(fast, slow)
    for gf, gs in zip(_grads(fast, (v1, v2, center)), _grads(slow, (v1, v2, center))):
        _assert_close(gf, gs)


def test_angle_without_center_and_other_temperature():
    v1, v2, labels, _ = _views(3)
    fast = angle_contrastive_loss(v1, v2, labels, None, temperature=0.5, anchors="both")
    _assert_close(fast, slow_angle(v1, v2, labels, None, 0.5, "both"))


def test_angle_denominator_excludes_positive_by_hand():
    # One image, two tokens: token 0 normal, token 1 anomalous. Anchor 0 (view 1, normal) has the
    # positive z_0' and the negatives z_1, z_1' only (never z_0' or itself).
    z = torch.nn.functional.normalize(torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(7)), dim=1)
    v1, v2 = z[:2].reshape(1, 2, 3), z[2:].reshape(1, 2, 3)
    labels = torch.tensor([[False, True]])
    tau = 0.2
    s = z @ z.T / tau
    anchor0 = torch.logsumexp(torch.stack([s[0, 1], s[0, 3]]), 0) - s[0, 2]
    anchor1 = torch.logsumexp(torch.stack([s[1, 0], s[1, 2]]), 0) - s[1, 3]
    loss = angle_contrastive_loss(v1, v2, labels, None, temperature=tau, anchors="first")
    _assert_close(loss, (anchor0 + anchor1) / 2, rel=1e-12)


@pytest.mark.parametrize("anchors", ["first", "both"])
def test_angle_chunk_sizes_give_identical_values_and_gradients(anchors):
    v1, v2, labels, center = _views(4, batch=3, tokens=7, dim=6)
    reference = None
    total = 2 * 3 * 7
    for chunk_size in (1, 7, total):
        loss = angle_contrastive_loss(v1, v2, labels, center, anchors=anchors, chunk_size=chunk_size)
        result = (loss, *_grads(loss, (v1, v2, center)))
        if reference is None:
            reference = result
        for a, b in zip(result, reference):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_angle_gradcheck_with_chunks():
    v1, v2, labels, center = _views(5, batch=1, tokens=4, dim=3)

    def fn(a, b, c):
        return angle_contrastive_loss(a, b, labels, c, anchors="both", chunk_size=3)

    assert torch.autograd.gradcheck(fn, (v1, v2, center))


def test_blockwise_logsumexp_matches_torch():
    from adpretrain_hf.losses.angle import _LogSumExpSimilarity

    g = torch.Generator().manual_seed(11)
    a = (3 * torch.randn(5, 4, generator=g, dtype=F64)).requires_grad_()
    n = torch.randn(9, 4, generator=g, dtype=F64).requires_grad_()
    w = torch.randn(5, generator=g, dtype=F64)
    fast = (_LogSumExpSimilarity.apply(a, n) * w).sum()
    slow = (torch.logsumexp(a @ n.T, dim=1) * w).sum()
    _assert_close(fast, slow, rel=1e-12)
    for gf, gs in zip(_grads(fast, (a, n)), _grads(slow, (a, n))):
        _assert_close(gf, gs, rel=1e-12)


@pytest.mark.parametrize("anchors", ["first", "both"])
def test_angle_single_anomalous_patch(anchors):
    v1, v2, _, center = _views(6)
    labels = torch.zeros(2, 6, dtype=torch.bool)
    labels[1, 3] = True
    fast = angle_contrastive_loss(v1, v2, labels, center, anchors=anchors)
    _assert_close(fast, slow_angle(v1, v2, labels, center, TEMPERATURE, anchors))


@pytest.mark.parametrize("all_anomalous", [False, True])
def test_angle_is_exactly_zero_without_negatives(all_anomalous):
    v1, v2, _, center = _views(7)
    labels = torch.full((2, 6), all_anomalous)
    assert slow_angle_terms(v1, v2, labels, center, TEMPERATURE, "both") == {}
    loss = angle_contrastive_loss(v1, v2, labels, center, anchors="both")
    assert loss.item() == 0.0
    grads = _grads(loss, (v1, v2))
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_angle_half_precision_inputs_compute_in_float32():
    v1, v2, labels, center = _views(8, requires_grad=False)
    loss = angle_contrastive_loss(v1.bfloat16(), v2.bfloat16(), labels, center.bfloat16())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    exact = angle_contrastive_loss(v1.bfloat16().double(), v2.bfloat16().double(), labels, center.bfloat16().double())
    assert abs(loss.item() - exact.item()) < 1e-4


def test_angle_integer_labels_and_default_chunk():
    v1, v2, labels, center = _views(9, requires_grad=False)
    a = angle_contrastive_loss(v1, v2, labels, center)
    b = angle_contrastive_loss(v1, v2, labels.long(), center)
    assert a.item() == b.item()
    assert default_chunk_size(2 * 32 * 256) == 4096  # the paper's batch: blocks of 4096 x 16384
