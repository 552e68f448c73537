"""Slow, direct transcriptions of the paper's loss equations, and small inputs for the loss tests.

The ``slow_*`` functions below are written from Eqs. (2)-(7) of the paper (and the release's
documented variants), one scalar at a time with explicit Python loops over anchors, negatives and
features. They share no code with the package. Everything runs in float64 on tiny inputs.
"""

from __future__ import annotations

import torch

from adpretrain_hf.modeling.loss_options_adpretrain import ABNORMAL_MARGIN, HYPERSPHERE_RADIUS, TEMPERATURE


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


def slow_norm(features, labels, subset=False, **options):
    """Mean over all features, or with ``subset`` the release's sum of per-part means."""
    if subset:
        return slow_norm_subset(features, labels, **options)
    terms = slow_norm_terms(features, labels, **options)
    return sum(terms) / len(terms)


def slow_norm_subset(features, labels, r=HYPERSPHERE_RADIUS, delta_r=ABNORMAL_MARGIN, kind="paper", detach=False,
                     adaptive=False, hinge=False, push_inner=False):
    """The release's reduction, feature by feature: each part (normals contracted, normals pushed
    outward, anomalous pushed beyond r') averaged over its own active features, the means added."""
    flat = features.reshape(-1, features.shape[-1])
    ms = [bool(m) for m in labels.reshape(-1)]
    ns = [torch.sqrt(torch.sqrt((v * v).sum()) + 1) - 1 if kind == "release" else torch.sqrt((v * v).sum() + 1) - 1 for v in flat]
    if adaptive and any(ms):
        r = min(0.9 * min(float(n.detach()) for n, m in zip(ns, ms) if m), r)
    rho, r_abnormal = 0.99 * r, r + delta_r

    def barrier(d):
        weight = torch.exp(d).detach() if detach else torch.exp(d)
        return -torch.log(torch.sigmoid(-d)) * weight

    contracted = [barrier(n - r) for n, m in zip(ns, ms) if not m and (not hinge or float(n.detach()) > r)]
    inner = [barrier(rho - n) for n, m in zip(ns, ms) if push_inner and not m and float(n.detach()) < rho]
    pushed = [barrier(r_abnormal - n) for n, m in zip(ns, ms) if m and float(n.detach()) <= r_abnormal]
    return sum(sum(part) / len(part) for part in (contracted, inner, pushed) if part)


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
    """The release's sum: lambda * mean angle + norm(view 1) + norm(view 2), per layer (the norm
    reduced as ``slow_norm``'s options say: ``subset=True`` for the release's)."""
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
