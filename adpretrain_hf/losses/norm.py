"""Norm-oriented contrastive loss, Eqs. (3)-(6) of the paper, with the release's variants.

Per feature ``x_i`` (not center-shifted: the hypersphere is origin-centered) with norm ``n_i``:

    normal   (m_i = 0):  d_i  = n_i - r,   L = -logsigmoid(-d_i) * exp(d_i)                  (3)
    abnormal (m_i = 1):  d'_i = r' - n_i,  L = -logsigmoid(-d'_i) * exp(d'_i) if n_i <= r'     (5)
                                           L = 0                              otherwise
    r' = r + Delta r                                                                          (6)

and the loss is the mean over all features (Eq. 7's ``1/2N`` over both views).

``norm_kind``:
    ``"paper"``   ``n = sqrt(||x||^2 + 1) - 1`` (pseudo-Huber, computed as
                  ``||x||^2 / (sqrt(||x||^2 + 1) + 1)`` to avoid cancellation near 0);
    ``"release"`` ``n = sqrt(||x|| + 1) - 1`` (the released code).
Caution: with ``"paper"`` ``n ~ ||x||`` for large features, and ``exp(d)`` overflows float32 once
``n - r > 88`` (``||x|| > ~89``); the loss is then ``inf``. ``"release"`` grows like
``sqrt(||x||)`` and does not overflow for any practical feature.

Release options (all off by default, i.e. the paper):
    ``detach_exp_factor``   the ``exp(.)`` weight is a constant in backward (``.detach()``).
    ``adaptive_radius``     ``r_eff = min(0.9 * min_{anomalous j} n_j, r)`` when the call sees
                            an anomalous feature (detached), else ``r``; ``r' = r_eff + Delta r``.
    ``hinge_normals``       normal features already inside ``r_eff`` get no contraction loss
                            (the release applies Eq. 3 only where ``n > r_eff``).
    ``push_inner_normals``  normal features far inside, ``n < rho = 0.99 * r_eff``, are pushed
                            outward with Eq. 5's form: ``L += -logsigmoid(-(rho - n)) * exp(rho - n)``.

Reduction (``reduction``; ``LossOptions.norm_loss_reduction`` is ``"all"`` or ``"subset"``):
    ``"all"``     every part summed over the view's features and divided by all of them, as
                  Eq. (7)'s ``1/2N`` does;
    ``"subset"``  the release: each active part (normals contracted, normals pushed outward,
                  anomalous below ``r'``) averaged over ITS OWN active features, the (up to
                  three) averages added; an empty part adds 0.
                  The ratio to ``"all"`` is ``N / |part|``: ~1 at the start of training, 10-60x
                  later, when few features are still active;
    ``"sum"``     the plain sum.
The adaptive radius is computed from the features of ONE call, i.e. per view, as the release does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..modeling.loss_options_adpretrain import (
    ABNORMAL_MARGIN,
    HYPERSPHERE_RADIUS,
    NORM_KINDS,
    NORM_LOSS_REDUCTIONS,
    check_choice,
    check_positive,
)
from ._checks import check_features, check_labels, compute_dtype
from .constants import ADAPTIVE_RADIUS_FACTOR, INNER_RADIUS_FRACTION

__all__ = ["feature_norm", "norm_contrastive_loss", "effective_radius"]

_REDUCTIONS = (*NORM_LOSS_REDUCTIONS, "sum")  # "all", "subset" (the loss options' values), and the plain sum


def feature_norm(x: torch.Tensor, kind: str = "paper") -> torch.Tensor:
    """Feature norm used by the norm loss and by FeatureNorm scoring.

    Args:
        x: ``[..., D]`` features.
        kind: ``"paper"`` (``sqrt(||x||^2 + 1) - 1``) or ``"release"`` (``sqrt(||x|| + 1) - 1``).

    Returns:
        ``[...]`` norms, ``>= 0``.
    """
    check_choice("norm_kind", kind, NORM_KINDS)
    if kind == "paper":
        squared = x.pow(2).sum(dim=-1)
        return squared / (torch.sqrt(squared + 1.0) + 1.0)  # == sqrt(s + 1) - 1, without cancellation
    length = torch.linalg.vector_norm(x, dim=-1)
    return length / (torch.sqrt(length + 1.0) + 1.0)  # == sqrt(l + 1) - 1


def effective_radius(norms: torch.Tensor, labels: torch.Tensor, radius: float, adaptive: bool) -> torch.Tensor:
    """The radius the loss uses: ``radius``, or the release's adaptive cap (a detached 0-d tensor).

    norms: ``[...]``; labels: ``[...]`` bool, True = anomalous.
    """
    r = norms.new_tensor(radius)
    if not adaptive:
        return r
    smallest = norms.detach().masked_fill(~labels, float("inf")).amin() if norms.numel() else r
    return torch.minimum(ADAPTIVE_RADIUS_FACTOR * smallest, r)  # inf (no anomaly) -> radius


def _barrier(active: torch.Tensor, d: torch.Tensor, detach_exp_factor: bool) -> torch.Tensor:
    """``-logsigmoid(-d) * exp(d)`` where ``active``, else 0: the common form of Eqs. (3) and (5).

    Inactive entries see ``d = 0``, so no inf/NaN from them leaks into backward.
    """
    zero = torch.zeros_like(d)
    d = torch.where(active, d, zero)
    weight = torch.exp(d.detach() if detach_exp_factor else d)
    return torch.where(active, -F.logsigmoid(-d) * weight, zero)


def norm_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    radius: float = HYPERSPHERE_RADIUS,
    margin: float = ABNORMAL_MARGIN,
    norm_kind: str = "paper",
    detach_exp_factor: bool = False,
    adaptive_radius: bool = False,
    hinge_normals: bool = False,
    push_inner_normals: bool = False,
    reduction: str = "all",
) -> torch.Tensor:
    """Norm-oriented contrastive loss (Eq. 6) of one view of one layer.

    Args:
        features: ``[..., D]`` projected features, typically ``[B, N, D]``.
        labels: ``features.shape[:-1]`` bool (or 0/1 integer), True = anomalous patch.
        radius: ``r`` (paper: 0.4).  margin: ``Delta r`` (paper: 0.75).
        norm_kind, detach_exp_factor, adaptive_radius, hinge_normals, push_inner_normals:
            see the module docstring; defaults are the paper's.
        reduction: ``"all"`` the mean over all features (0 for no feature), ``"subset"`` (the release:
            each active part over its own features) or ``"sum"``; see the module docstring.

    Returns:
        A scalar tensor (float32, or float64 for float64 inputs).
    """
    check_features("features", features, ndim=None)
    labels = check_labels("labels", labels, features.shape[:-1], features.device)
    radius = check_positive("radius", radius)
    margin = check_positive("margin", margin, allow_zero=True)
    check_choice("norm_kind", norm_kind, NORM_KINDS)
    check_choice("reduction", reduction, _REDUCTIONS)

    with torch.autocast(device_type=features.device.type, enabled=False):
        n = feature_norm(features.to(compute_dtype(features)), norm_kind)  # [...]
        r = effective_radius(n, labels, radius, adaptive_radius)
        r_abnormal = r + margin
        normal = ~labels
        contract = normal & (n > r) if hinge_normals else normal
        parts = [(contract, _barrier(contract, n - r, detach_exp_factor))]  # Eq. (3)
        anomalous = labels & (n <= r_abnormal)
        parts.append((anomalous, _barrier(anomalous, r_abnormal - n, detach_exp_factor)))  # Eq. (5)
        if push_inner_normals:
            rho = INNER_RADIUS_FRACTION * r
            inner = normal & (n < rho)
            parts.append((inner, _barrier(inner, rho - n, detach_exp_factor)))
        if reduction == "subset":  # each part over its own active features; an empty part adds 0
            return sum(part.sum() / active.sum().clamp(min=1) for active, part in parts)
        loss = sum(part for _, part in parts)
        if reduction == "sum":
            return loss.sum()
        return loss.sum() / max(1, loss.numel())
