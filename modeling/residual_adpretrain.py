"""Residual features (paper section 3.1): ``r = x - nearest(x, references)``.

Matching is on L2-normalised vectors (cosine, as the release) or plain L2; the residual is
always taken on the raw vectors. Each tapped layer has its own bank. A bank is either
*shared* (``[M, C]``: evaluation's fixed 8-shot set) or *per sample* (``[B, M, C]``:
pretraining draws K references for every image).

Library code reaches this through ``ADPretrainModel.residuals`` (the model's public step),
never directly, so the metric and matcher backend come from the model in one place.

Part of the remote-code bundle.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F

from .matching_adpretrain import PreparedBank, batched_nearest_indices, nearest_neighbors


def residual_features(
    tokens: torch.Tensor, bank: Union[torch.Tensor, PreparedBank], metric: str = "cosine", backend: str = "auto"
) -> torch.Tensor:
    """``tokens [B, N, C]`` minus each token's nearest bank row; bank ``[M, C]`` or ``[B, M, C]``,
    or a shared bank's :class:`PreparedBank` (a plain ``[M, C]`` tensor is prepared once and kept:
    ``matching_adpretrain.prepare_bank``).

    ``backend``: a ``matching_adpretrain.BACKENDS`` name (``"traceable"`` for ONNX export).
    """
    if isinstance(bank, PreparedBank):
        flat = tokens.reshape(-1, tokens.shape[-1])
        _, idx = nearest_neighbors(flat, bank, metric=metric, backend=backend)
        return tokens - bank.bank.to(tokens.device)[idx].reshape(tokens.shape).to(tokens.dtype)
    if bank.dim() == 2:
        flat = tokens.reshape(-1, tokens.shape[-1])
        _, idx = nearest_neighbors(flat, bank, metric=metric, backend=backend)
        nearest = bank.to(tokens.device)[idx].reshape(tokens.shape)
    elif bank.dim() == 3:
        if bank.shape[0] != tokens.shape[0]:
            raise ValueError(f"per-sample banks cover {bank.shape[0]} images but the batch has {tokens.shape[0]}")
        idx = batched_nearest_indices(tokens, bank, metric=metric)
        nearest = torch.gather(bank.to(tokens.device), 1, idx.unsqueeze(-1).expand(-1, -1, bank.shape[-1]))
    else:
        raise ValueError(f"a reference bank must be [M, C] or [B, M, C], got shape {tuple(bank.shape)}")
    return tokens - nearest.to(tokens.dtype)


def reference_residuals(bank: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """Residuals of the references themselves (leave-self-out nearest neighbour), for the
    ``cross_attn`` ablation's keys/values; evenly subsampled to at most ``max_tokens`` rows.

    bank ``[M, C]`` -> ``[min(M, max_tokens), C]``; ``[B, M, C]`` -> ``[B, min(M, max_tokens), C]``.
    """
    batched = bank.dim() == 3
    b = bank if batched else bank.unsqueeze(0)
    if b.shape[1] < 2:
        raise ValueError("cross_attn needs at least two reference tokens per bank")
    step = max(1, -(-b.shape[1] // max_tokens))
    picked = b[:, ::step]
    normed = F.normalize(picked.float(), dim=-1)
    sims = torch.bmm(normed, F.normalize(b.float(), dim=-1).transpose(1, 2))  # [B, m, M]
    rows = torch.arange(picked.shape[1], device=b.device)
    sims[:, rows, rows * step] = float("-inf")  # never match a token with itself
    idx = sims.argmax(dim=-1)
    nearest = torch.gather(b, 1, idx.unsqueeze(-1).expand(-1, -1, b.shape[-1]))
    out = picked - nearest
    return out if batched else out[0]

