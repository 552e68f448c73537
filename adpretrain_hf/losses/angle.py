"""Angle-oriented contrastive loss, Eq. (2) of the paper, memory-bounded.

For one tapped layer, the ``2P = 2 * B * N`` projected features of the two augmented views are
stacked as ``x_1 .. x_P`` (view 1, row-major over batch and tokens) and ``x_{P+1} .. x_{2P}``
(view 2, same order), so the positive of ``x_i`` is ``x_{i'}``, ``i' = i +- P`` (same image, same
location, other view). With center-shifted, L2-normalised features ``z_i = (x_i - c) / ||x_i - c||``:

    L_angle(i) = -log( exp(z_i . z_i' / tau) / sum_{k != i, m_k != m_i} exp(z_i . z_k / tau) )
               = logsumexp_{k: m_k != m_i}(z_i . z_k / tau) - z_i . z_i' / tau

The denominator holds only features whose label differs from the anchor's, so the positive
(same label) is not in it, exactly as Eq. (2) reads; the loss can therefore be negative.

Because the negatives of a normal anchor are exactly the anomalous features (and vice versa),
anchors are grouped by label and each group is compared only with the opposite group: no mask,
no ``-inf``, and the similarity block of a chunk of ``c`` anchors is ``c x M_neg`` with
``M_neg = number of opposite-label features <= 2P``. When anomalies are rare (the usual case),
this is far less work than the full ``P x 2P`` matrix the release builds.

Memory bound (forward and backward). The only arrays larger than the features are similarity
blocks of one chunk, ``chunk_size x M_neg`` elements (float32, or float64 for float64 inputs),
and exactly one lives at a time: a custom autograd function reduces the block in place to the
``[chunk]`` logsumexp in forward, saves nothing of it, and rebuilds it in backward where it turns
in place into the softmax weights (one extra matmul per chunk, the price of the bound).
The default chunk is ``max(1, max_block_elements // 2P)`` anchors: for the paper's batch
(32 x 256 tokens x 2 views = 16,384 features) that is 4,096 anchors, so a block never exceeds
4,096 x 16,384 elements (256 MiB in float32); grouping by label usually makes it much smaller.
Besides the blocks the loss keeps ``O(2P x D)`` memory: the normalised features, their
anchor/positive/negative gathers and, in backward, their gradients (a handful of feature-sized
arrays). The loss is differentiable once (no double backward).

Empty cases: an anchor with no opposite-label feature in the batch has no denominator; it
contributes nothing. Labels are shared by the two views, so either every anchor has negatives
(the batch holds both normal and anomalous patches) or none has; in the latter case (no
anomalous patch, or only anomalous patches) the loss is exactly 0, with a defined (zero) gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..modeling.loss_options_adpretrain import ANGLE_ANCHORS, TEMPERATURE, check_choice, check_positive
from ._checks import check_center, check_chunk_size, check_features, check_labels, compute_dtype
from .constants import DEFAULT_MAX_BLOCK_ELEMENTS

__all__ = ["angle_contrastive_loss", "default_chunk_size"]

_REDUCTIONS = ("mean", "sum")


def default_chunk_size(num_features: int, max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS) -> int:
    """Anchors per chunk so that a ``chunk x num_features`` block has at most ``max_block_elements``.

    ``num_features`` is ``2 * B * N`` (both views), the largest possible number of negatives.
    """
    return max(1, int(max_block_elements) // max(1, int(num_features)))


class _LogSumExpSimilarity(torch.autograd.Function):
    """``logsumexp_k(a_i . n_k)`` for a chunk of anchors, with one ``[c, M_neg]`` block at a time.

    Forward builds the block, reduces it in place and keeps only the anchors, the negatives (both
    references to tensors that exist anyway) and the ``[c]`` result. Backward rebuilds the block
    and turns it into the softmax weights in place, so forward and backward each hold exactly one
    block. Equivalent to ``torch.logsumexp(a @ n.T, 1)`` (tested), not twice differentiable.
    """

    @staticmethod
    def forward(ctx, anchors: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        # anchors: [c, D] (already divided by tau), negatives: [M_neg, D]
        block = anchors @ negatives.transpose(0, 1)  # [c, M_neg], the only large array
        row_max = block.amax(dim=1, keepdim=True)  # [c, 1]
        result = row_max.squeeze(1) + block.sub_(row_max).exp_().sum(dim=1).log()  # [c]
        ctx.save_for_backward(anchors, negatives, result)
        return result

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        anchors, negatives, result = ctx.saved_tensors
        weights = anchors @ negatives.transpose(0, 1)  # [c, M_neg], rebuilt
        weights.sub_(result.unsqueeze(1)).exp_().mul_(grad.unsqueeze(1))  # softmax * upstream grad
        grad_anchors = weights @ negatives if ctx.needs_input_grad[0] else None  # [c, D]
        grad_negatives = weights.transpose(0, 1) @ anchors if ctx.needs_input_grad[1] else None  # [M_neg, D]
        return grad_anchors, grad_negatives


def _chunk_loss_sum(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, inv_tau: float) -> torch.Tensor:
    """Sum over a chunk of anchors of ``logsumexp_k(z_a . z_k / tau) - z_a . z_a' / tau``.

    anchors, positives: ``[c, D]`` unit vectors; negatives: ``[M_neg, D]`` unit vectors.
    Returns a scalar.
    """
    scaled = anchors * inv_tau  # [c, D]
    log_denominator = _LogSumExpSimilarity.apply(scaled, negatives)  # [c]
    positive_logit = (scaled * positives).sum(dim=1)  # [c]
    return (log_denominator - positive_logit).sum()


def angle_contrastive_loss(
    view1: torch.Tensor,
    view2: torch.Tensor,
    labels: torch.Tensor,
    center: torch.Tensor | None = None,
    *,
    temperature: float = TEMPERATURE,
    anchors: str = "first",
    reduction: str = "mean",
    chunk_size: int | None = None,
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """Angle-oriented contrastive loss of one layer (Eq. 2), chunked over anchors.

    Args:
        view1: ``[B, N, D]`` projected features of the first augmented view.
        view2: ``[B, N, D]`` projected features of the second view, same locations.
        labels: ``[B, N]`` bool (or 0/1 integer), True = anomalous patch; shared by both views.
        center: ``[D]`` center ``c`` of the normal features, subtracted before the cosine;
            ``None`` measures angles around the origin (the paper's "w/o center" ablation).
        temperature: ``tau`` (paper: 0.15).
        anchors: ``"first"`` - only view-1 features are anchors (Eq. 7's ``I[i <= N]``, the paper);
            ``"both"`` - features of both views are anchors (the release).
        reduction: ``"mean"`` over anchors that have at least one negative (0 if none has),
            or ``"sum"`` over them (what Eq. 7 needs before its ``1 / 2N``).
        chunk_size: anchors per chunk; ``None`` = ``default_chunk_size(2*B*N, max_block_elements)``.
        max_block_elements: the block budget used when ``chunk_size`` is None.

    Returns:
        A scalar tensor (float32, or float64 for float64 inputs), differentiable with respect to
        ``view1``, ``view2`` and ``center``. See the module docstring for the memory bound.
    """
    check_features("view1", view1)
    check_features("view2", view2)
    if view1.shape != view2.shape:
        raise ValueError(
            f"view1 {tuple(view1.shape)} and view2 {tuple(view2.shape)} differ: pass the two augmented "
            "views of the same images, token for token ([B, N, D] each)"
        )
    batch, tokens, dim = view1.shape
    labels = check_labels("labels", labels, (batch, tokens), view1.device)
    check_center("center", center, dim)
    inv_tau = 1.0 / check_positive("temperature", temperature)
    check_choice("anchors", anchors, ANGLE_ANCHORS)
    check_choice("reduction", reduction, _REDUCTIONS)
    chunk_size = check_chunk_size(chunk_size)
    if chunk_size is None:
        chunk_size = default_chunk_size(2 * batch * tokens, check_positive("max_block_elements", max_block_elements))

    per_view = batch * tokens
    dtype = compute_dtype(view1)
    with torch.autocast(device_type=view1.device.type, enabled=False):
        x = torch.cat([view1.reshape(per_view, dim), view2.reshape(per_view, dim)]).to(dtype)  # [2P, D]
        num_anchors = per_view if anchors == "first" else 2 * per_view
        flat_labels = labels.reshape(per_view)
        num_anomalous = int(flat_labels.sum())  # host syncs (here and nonzero): the chunk layout depends on labels
        if per_view == 0 or num_anomalous in (0, per_view):
            # No anchor has a negative: the loss is 0 by definition; keep it attached to the graph.
            return x.sum() * 0.0
        if center is not None:
            x = x - center.to(dtype)
        z = F.normalize(x, dim=1)  # [2P, D]
        is_anomalous = torch.cat([flat_labels, flat_labels])  # [2P]
        normal_ids = (~is_anomalous).nonzero().squeeze(1)
        anomalous_ids = is_anomalous.nonzero().squeeze(1)

        # Anchors grouped by label (normal first); their positives in the same order.
        anchor_is_anomalous = is_anomalous[:num_anchors]
        normal_anchor_ids = (~anchor_is_anomalous).nonzero().squeeze(1)
        anomalous_anchor_ids = anchor_is_anomalous.nonzero().squeeze(1)
        anchor_ids = torch.cat([normal_anchor_ids, anomalous_anchor_ids])
        positive_ids = (anchor_ids + per_view) % (2 * per_view)
        counts = (normal_anchor_ids.numel(), anomalous_anchor_ids.numel())
        sizes = [min(chunk_size, n - s) for n in counts for s in range(0, n, chunk_size)]
        anchor_chunks = z[anchor_ids].split(sizes)  # one split node: cheap backward
        positive_chunks = z[positive_ids].split(sizes)
        groups = [z[anomalous_ids]] * len(range(0, counts[0], chunk_size))
        groups += [z[normal_ids]] * len(range(0, counts[1], chunk_size))

        total = z.new_zeros(())
        for anchor_chunk, positive_chunk, negatives in zip(anchor_chunks, positive_chunks, groups):
            total = total + _chunk_loss_sum(anchor_chunk, positive_chunk, negatives, inv_tau)
    return total / num_anchors if reduction == "mean" else total
