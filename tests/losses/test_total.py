"""Tests of adpretrain_hf.losses against slow, direct transcriptions of the paper's equations.

The ``slow_*`` functions below are written from Eqs. (2)-(7) of the paper (and the release's
documented variants), one scalar at a time with explicit Python loops over anchors, negatives and
features. They share no code with the package. Everything runs in float64 on tiny inputs.
"""

from __future__ import annotations

import math

import pytest
import torch

from adpretrain_hf.losses import (
    ABNORMAL_MARGIN,
    HYPERSPHERE_RADIUS,
    PAPER_LOSS_OPTIONS,
    RELEASE_LOSS_OPTIONS,
    TEMPERATURE,
    ADPretrainLoss,
    CenterEstimator,
    RunningCenter,
    angle_contrastive_loss,
    default_chunk_size,
    effective_radius,
    feature_norm,
    norm_contrastive_loss,
)

F64 = torch.float64
REL_TOL = 1e-5


# --------------------------------------------------------------------------- slow transcriptions


def _flatten_views(view1, view2, labels):
    """x_1..x_P (view 1, row-major over b, n), x_{P+1}..x_{2P} (view 2), and their labels m_i."""
    batch, tokens, _ = view1.shape
    xs = [view1[b, n] for b in range(batch) for n in range(tokens)]
    xs += [view2[b, n] for b in range(batch) for n in range(tokens)]
    ms = [bool(labels[b, n]) for b in range(batch) for n in range(tokens)] * 2
    return xs, ms


def slow_angle_terms(view1, view2, labels, center, tau, anchors):
    """{anchor index i: L_angle(x_i)} of Eq. (2); anchors without a negative are absent."""
    xs, ms = _flatten_views(view1, view2, labels)
    per_view = len(xs) // 2
    c = torch.zeros_like(xs[0]) if center is None else center

    def sim(a, b):  # cosine similarity of the center-shifted features
        a, b = a - c, b - c
        return torch.dot(a, b) / (torch.sqrt(torch.dot(a, a)) * torch.sqrt(torch.dot(b, b)))

    terms = {}
    last = per_view if anchors == "first" else 2 * per_view
    for i in range(last):
        i_pos = i + per_view if i < per_view else i - per_view
        denominator, has_negative = 0.0, False
        for k in range(2 * per_view):
            if k != i and ms[k] != ms[i]:  # I[k != i] * I[m_k != m_i]
                denominator = denominator + torch.exp(sim(xs[i], xs[k]) / tau)
                has_negative = True
        if has_negative:
            terms[i] = -torch.log(torch.exp(sim(xs[i], xs[i_pos]) / tau) / denominator)
    return terms


def slow_angle(view1, view2, labels, center, tau=TEMPERATURE, anchors="first"):
    terms = slow_angle_terms(view1, view2, labels, center, tau, anchors)
    return sum(terms.values()) / len(terms) if terms else torch.zeros((), dtype=F64)


def slow_norm_terms(
    features,
    labels,
    r=HYPERSPHERE_RADIUS,
    delta_r=ABNORMAL_MARGIN,
    kind="paper",
    detach=False,
    adaptive=False,
    hinge=False,
    push_inner=False,
):
    """Per-feature L_norm of Eq. (6) (Eqs. 3 and 5), plus the release's variants, one by one."""
    batch, tokens, _ = features.shape
    xs = [features[b, n] for b in range(batch) for n in range(tokens)]
    ms = [bool(labels[b, n]) for b in range(batch) for n in range(tokens)]

    def norm(v):
        squared = sum(v[j] * v[j] for j in range(v.shape[0]))
        if kind == "paper":
            return torch.sqrt(squared + 1) - 1
        return torch.sqrt(torch.sqrt(squared) + 1) - 1

    ns = [norm(v) for v in xs]
    if adaptive and any(ms):
        r = min(0.9 * min(float(n.detach()) for n, m in zip(ns, ms) if m), r)
    r_abnormal = r + delta_r

    def barrier(d):  # -logsig(-d) * e^d
        weight = torch.exp(d).detach() if detach else torch.exp(d)
        return -torch.log(torch.sigmoid(-d)) * weight

    terms = []
    for n, m in zip(ns, ms):
        if not m:
            term = barrier(n - r) if (not hinge or float(n.detach()) > r) else torch.zeros((), dtype=F64)
            if push_inner and float(n.detach()) < 0.99 * r:
                term = term + barrier(0.99 * r - n)
        else:
            term = barrier(r_abnormal - n) if float(n.detach()) <= r_abnormal else torch.zeros((), dtype=F64)
        terms.append(term)
    return terms


def slow_norm(features, labels, **options):
    terms = slow_norm_terms(features, labels, **options)
    return sum(terms) / len(terms)


def slow_total_eq7(views1, views2, labels, centers, lam, tau, anchors="first", **norm_options):
    """Eq. (7) per layer, written as the paper prints it, summed over layers."""
    total = 0.0
    for v1, v2, lab, c in zip(views1, views2, labels, centers):
        per_view = v1.shape[0] * v1.shape[1]
        angle = slow_angle_terms(v1, v2, lab, c, tau, anchors)
        norms = slow_norm_terms(v1, lab, **norm_options) + slow_norm_terms(v2, lab, **norm_options)
        layer = 0.0
        for i in range(2 * per_view):  # i is 0-based: I[i <= N] is "i < per_view"
            in_angle = (i < per_view) if anchors == "first" else True
            angle_term = angle.get(i, 0.0) if in_angle else 0.0
            layer = layer + lam * angle_term + norms[i]
        total = total + layer / (2 * per_view)
    return total


def slow_total_release(views1, views2, labels, centers, lam, tau, anchors, **norm_options):
    """The release's sum: lambda * mean angle + mean norm(view 1) + mean norm(view 2), per layer."""
    total = 0.0
    for v1, v2, lab, c in zip(views1, views2, labels, centers):
        total = total + lam * slow_angle(v1, v2, lab, c, tau, anchors)
        total = total + slow_norm(v1, lab, **norm_options) + slow_norm(v2, lab, **norm_options)
    return total


# --------------------------------------------------------------------------- helpers


def _views(seed, batch=2, tokens=6, dim=5, anomaly_rate=0.3, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    v1 = torch.randn(batch, tokens, dim, generator=g, dtype=F64)
    v2 = v1 + 0.5 * torch.randn(batch, tokens, dim, generator=g, dtype=F64)
    labels = torch.rand(batch, tokens, generator=g) < anomaly_rate
    labels[0, 0], labels[-1, -1] = True, False  # both labels present
    center = 0.3 * torch.randn(dim, generator=g, dtype=F64)
    for t in (v1, v2, center):
        t.requires_grad_(requires_grad)
    return v1, v2, labels, center


def _norm_features(seed, batch=3, tokens=8, dim=5, requires_grad=True):
    """Random directions with norms spread over [0, 5]: every branch of Eqs. (3)/(5) is hit."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(batch, tokens, dim, generator=g, dtype=F64), dim=-1)
    length = 5.0 * torch.rand(batch, tokens, 1, generator=g, dtype=F64)
    x = (direction * length).requires_grad_(requires_grad)
    labels = torch.rand(batch, tokens, generator=g) < 0.4
    labels[0, 0], labels[0, 1] = True, False
    return x, labels


def _grads(value, tensors):
    return torch.autograd.grad(value, tensors, allow_unused=True)


def _assert_close(actual, expected, rel=REL_TOL):
    actual, expected = torch.as_tensor(actual, dtype=F64), torch.as_tensor(expected, dtype=F64)
    assert torch.isfinite(actual).all()
    scale = expected.abs().max().clamp(min=1e-12)
    assert ((actual - expected).abs().max() / scale) < rel, (actual, expected)


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


# --------------------------------------------------------------------------- total loss


def _layers(seed, requires_grad=True):
    """Two layers with different token counts and widths."""
    a = _views(seed, batch=2, tokens=6, dim=5, requires_grad=requires_grad)
    b = _views(seed + 100, batch=2, tokens=4, dim=3, requires_grad=requires_grad)
    return [a[0], b[0]], [a[1], b[1]], [a[2], b[2]], [a[3], b[3]]


@pytest.mark.parametrize("anchors", ["first", "both"])
def test_total_paper_matches_eq7_transcription(anchors):
    v1, v2, labels, centers = _layers(20)
    loss_fn = ADPretrainLoss(**{**PAPER_LOSS_OPTIONS, "anchors": anchors}, loss_weight=0.7, chunk_size=4)
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
    out = ADPretrainLoss(**RELEASE_LOSS_OPTIONS)(v1, v2, labels, centers)
    release_norm = {"kind": "release", "detach": True, "adaptive": True, "hinge": True, "push_inner": True}
    slow = slow_total_release(v1, v2, labels, centers, 1.0, TEMPERATURE, "both", **release_norm)
    _assert_close(out.loss, slow)
    params = [*v1, *v2, *centers]
    for gf, gs in zip(_grads(out.loss, params), _grads(slow, params)):
        _assert_close(gf, gs)


def test_release_normalization_is_twice_eq7_for_first_view_anchors():
    v1, v2, labels, centers = _layers(22, requires_grad=False)
    paper = ADPretrainLoss(**PAPER_LOSS_OPTIONS)(v1, v2, labels, centers).loss
    release = ADPretrainLoss(**{**PAPER_LOSS_OPTIONS, "normalization": "release"})(v1, v2, labels, centers).loss
    _assert_close(release, 2 * paper, rel=1e-12)


def test_total_without_anomalies_is_norm_only_and_finite():
    v1, v2, labels, centers = _layers(23)
    labels = [torch.zeros_like(lab) for lab in labels]
    out = ADPretrainLoss(**PAPER_LOSS_OPTIONS)(v1, v2, labels, centers)
    assert all(a.item() == 0.0 for a in out.angle)
    _assert_close(out.loss, sum((slow_norm(a, lab) + slow_norm(b, lab)) / 2 for a, b, lab in zip(v1, v2, labels)))
    assert all(torch.isfinite(g).all() for g in _grads(out.loss, [*v1, *v2]))


def test_total_norm_labels_override_and_no_centers():
    v1, v2, labels, _ = _layers(24)
    norm_labels = [torch.zeros_like(lab) for lab in labels]
    out = ADPretrainLoss(**PAPER_LOSS_OPTIONS)(v1, v2, labels, None, norm_labels=norm_labels)
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
    with pytest.raises(ValueError, match="radius"):
        ADPretrainLoss(radius=-1.0)
    with pytest.raises(ValueError, match="normalization"):
        ADPretrainLoss(normalization="mine")
    with pytest.raises(TypeError, match=r"wrap a single layer"):
        ADPretrainLoss()(v1, v2, labels, [center])
    with pytest.raises(ValueError, match="centers has 2"):
        ADPretrainLoss()([v1], [v2], [labels], [center, center])


# --------------------------------------------------------------------------- centers


def _center_batches(seed, steps=3):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        feats = [1e3 + torch.randn(2, 6, 4, generator=g), torch.randn(2, 3, 7, generator=g)]
        labels = [torch.rand(2, 6, generator=g) < 0.3, torch.rand(2, 3, generator=g) < 0.3]
        labels[1][0, 0] = False
        batches.append((feats, labels))
    return batches


def test_center_estimator_matches_mean_of_normal_rows():
    batches = _center_batches(40)
    estimator = CenterEstimator()
    for feats, labels in batches:
        estimator.update(feats, labels)
    centers = estimator.compute(dtype=F64)
    for layer in range(2):
        rows = torch.cat([f[layer].double()[~lab[layer]] for f, lab in batches])
        torch.testing.assert_close(centers[layer], rows.mean(0), rtol=1e-12, atol=1e-12)
        assert estimator.num_seen[layer] == rows.shape[0]
    assert estimator.compute()[0].dtype == torch.float32


def test_center_estimator_all_normal_and_errors():
    feats = [torch.randn(2, 4, 3, requires_grad=True)]
    estimator = CenterEstimator()
    with pytest.raises(ValueError, match="before compute"):
        estimator.compute()
    estimator.update(feats)  # labels=None: all normal; no graph is kept
    torch.testing.assert_close(estimator.compute(F64)[0], feats[0].detach().double().reshape(-1, 3).mean(0))
    only_anomalous = CenterEstimator()
    only_anomalous.update(feats, [torch.ones(2, 4, dtype=torch.bool)])
    with pytest.raises(ValueError, match="no normal patch feature seen for layer 0"):
        only_anomalous.compute()
    with pytest.raises(ValueError, match="tracks 1"):
        estimator.update(feats * 2)
    with pytest.raises(ValueError, match="channels"):
        estimator.update([torch.randn(2, 4, 5)])


def test_running_center_moving_average_and_cumulative():
    batches = _center_batches(41, steps=4)
    batches[2][1][0] = torch.ones(2, 6, dtype=torch.bool)  # layer 0 has no normal patch at step 2
    ema, cumulative, reference = RunningCenter(momentum=0.9), RunningCenter(momentum=None), CenterEstimator()
    expected = [None, None]
    for feats, labels in batches:
        for est in (ema, cumulative, reference):
            est.update(feats, labels)
        for layer in range(2):
            rows = feats[layer].double()[~labels[layer]]
            if rows.shape[0]:
                mean = rows.mean(0)
                expected[layer] = mean if expected[layer] is None else 0.9 * expected[layer] + 0.1 * mean
    for layer in range(2):
        torch.testing.assert_close(ema.compute(F64)[layer], expected[layer], rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(cumulative.compute(F64)[layer], reference.compute(F64)[layer])
    restored = RunningCenter(momentum=0.9)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.compute(F64)[0], ema.compute(F64)[0])


def test_running_center_initial_value():
    initial = [torch.zeros(4), torch.ones(7)]
    running = RunningCenter(momentum=0.5, initial=initial)
    torch.testing.assert_close(running.compute()[1], torch.ones(7))
    feats = [torch.full((1, 2, 4), 2.0), torch.full((1, 2, 7), 3.0)]
    running.update(feats, [torch.zeros(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)])
    torch.testing.assert_close(running.compute()[0], torch.full((4,), 1.0))  # 0.5 * 0 + 0.5 * 2
    torch.testing.assert_close(running.compute()[1], torch.ones(7))  # no normal patch: unchanged
    with pytest.raises(ValueError, match="momentum"):
        RunningCenter(momentum=1.0)


@pytest.mark.parametrize("normalization", ["paper", "release"])
def test_single_loss_ablations_keep_only_their_term(normalization):
    """Table 2 (a) ExpID 2.5 / 2.6: norm_loss_weight=0 is the angle loss alone, loss_weight=0 the norm loss alone."""
    v1, v2, labels, centers = _layers(31)
    both = ADPretrainLoss(normalization=normalization, chunk_size=4)(v1, v2, labels, centers)
    angle_only = ADPretrainLoss(normalization=normalization, norm_loss_weight=0.0, chunk_size=4)(v1, v2, labels, centers)
    norm_only = ADPretrainLoss(normalization=normalization, loss_weight=0.0, chunk_size=4)(v1, v2, labels, centers)
    # Each single-term loss plus the other equals the full loss, and each equals its own term's
    # reported value combined as the normalization says (norm terms: mean of the two views).
    _assert_close(angle_only.loss + norm_only.loss, both.loss)
    norm_scale = 1.0 if normalization == "paper" else 2.0
    _assert_close(norm_only.loss, norm_scale * sum(both.norm))
    with pytest.raises(ValueError, match="nothing would be trained"):
        ADPretrainLoss(loss_weight=0.0, norm_loss_weight=0.0)
