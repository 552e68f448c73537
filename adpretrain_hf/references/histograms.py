"""Grid cells, codeword histograms and the block-wise KL alignment distance (appendix C, Eqs. 8-9).

Pure tensor functions, no state, so each step can be checked on its own against a slow,
explicit computation. Notation: ``L = H1 * W1`` feature locations (row-major), ``S x S``
grid cells, ``P = S^2 * N_c`` codewords.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

HISTOGRAM_EPS = 1e-8
"""Floor of a histogram bin before L1 normalisation, so every ``log`` in the KL is finite."""


def cell_bounds(size: int, grid_size: int) -> torch.Tensor:
    """Boundaries ``[grid_size + 1]`` splitting ``range(size)`` into ``grid_size`` near-equal runs.

    Eq. 8 divides the map "evenly" into ``H1/S`` rows per cell, which only works when ``S``
    divides ``H1`` (ResNet-18 layer1 at 224 px gives 56 = 5 * 11.2). We use
    ``round(linspace(0, size, S + 1))``: cells differ by at most one row/column, and the
    split is exactly even when ``S`` divides ``size``.
    """
    if grid_size < 1:
        raise ValueError(f"grid_size must be >= 1, got {grid_size}")
    if size < grid_size:
        raise ValueError(
            f"a feature map side of {size} cannot be split into {grid_size} grid cells: "
            "use larger images or a smaller grid_size"
        )
    return torch.linspace(0, size, grid_size + 1, dtype=torch.float64).round().long()


def grid_cell_index(height: int, width: int, grid_size: int) -> torch.Tensor:
    """Cell id ``u * S + v`` of every location of an ``[height, width]`` map, row-major: ``[H*W]``."""
    row_cell = torch.bucketize(torch.arange(height), cell_bounds(height, grid_size)[1:], right=True)
    col_cell = torch.bucketize(torch.arange(width), cell_bounds(width, grid_size)[1:], right=True)
    return (row_cell[:, None] * grid_size + col_cell[None, :]).flatten()


def codeword_histograms(tokens: torch.Tensor, codebook: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
    """Per-location histogram over the codebook: ``tokens [N, L, C] x codebook [P, C] -> [N, L, P]``.

    The appendix's "cosine distance histogram" is made precise as
    ``h_k = (1 + cos(f, c_k)) / 2`` (each bin in ``[0, 1]``: 1 when the feature points along
    codeword ``k``, 0 when opposite), floored at :data:`HISTOGRAM_EPS` and L1-normalised over
    the ``P`` codewords. Why this and not a softmax: it has no temperature to tune, keeps the
    full similarity profile (a feature's relation to *every* codeword, which is what makes two
    locations comparable), and stays strictly positive so the KL is defined. With
    non-negative (post-ReLU) features the bins lie in ``[0.5, 1]``, so histograms are close to
    uniform and KL values small; rankings, not magnitudes, are what matching uses.
    """
    if tokens.dim() != 3 or codebook.dim() != 2 or tokens.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"tokens must be [N, L, C] and codebook [P, C] with the same C, got {tuple(tokens.shape)} "
            f"and {tuple(codebook.shape)}"
        )
    unit_codebook = torch.nn.functional.normalize(codebook.float(), dim=-1)
    out = []
    for start in range(0, tokens.shape[0], chunk_size):
        unit = torch.nn.functional.normalize(tokens[start : start + chunk_size].float(), dim=-1)
        bins = ((1.0 + unit @ unit_codebook.T) / 2.0).clamp_min(HISTOGRAM_EPS)  # [n, L, P]
        out.append(bins / bins.sum(dim=-1, keepdim=True))
    return torch.cat(out)


def kl_self_term(histograms: torch.Tensor) -> torch.Tensor:
    """``sum_p h log(P h)`` over the last axis: ``[..., P] -> [...]``.

    ``KL(p || q) = sum p log(P p) - sum p log(P q)`` (the ``log P`` shifts cancel because
    ``sum p = 1``). Measuring logs against the uniform histogram keeps both terms small for the
    near-uniform histograms of :func:`codeword_histograms`, so float32 does not lose the KL to
    cancellation. The pool's self term is computed once at fit time.
    """
    num_bins = histograms.shape[-1]
    return (histograms * torch.log(histograms * num_bins)).sum(dim=-1)


def block_kl_alignment(
    query_histograms: torch.Tensor,
    pool_histograms: torch.Tensor,
    cell_index: torch.Tensor,
    num_cells: int,
    pool_self_term: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Global semantic alignment distance ``D^align`` (Eq. 9) of every query to every pool image.

    For query ``q``, pool image ``i`` and location ``l`` (same position in both images):
    ``D_i[l] = KL(H_i[l] || H_q[l])`` (pool histogram first, as the appendix writes
    ``KL(H_i^{u,v}, H^{u,v})``); ``d_i^{u,v} = max`` of ``D_i`` over the locations of cell
    ``(u, v)`` (a cell matches only if *all* its locations do); ``D^align_i`` = mean over the
    ``S^2`` cells.

    Args:
        query_histograms: ``[Q, L, P]``, rows L1-normalised and strictly positive.
        pool_histograms: ``[N, L, P]``, idem.
        cell_index: ``[L]`` cell id of each location (:func:`grid_cell_index`).
        num_cells: ``S^2``.
        pool_self_term: ``[N, L]`` precomputed :func:`kl_self_term` of the pool (computed here
            when ``None``).
        chunk_size: pool images per step; peak extra memory is ``Q * chunk_size * L`` floats.

    Returns:
        ``[Q, N]`` distances (float32, on the histograms' device), smaller = better aligned.
    """
    if query_histograms.dim() != 3 or pool_histograms.dim() != 3 or query_histograms.shape[1:] != pool_histograms.shape[1:]:
        raise ValueError(
            "query and pool histograms must be [Q, L, P] and [N, L, P] with the same L and P, got "
            f"{tuple(query_histograms.shape)} and {tuple(pool_histograms.shape)}: compute them "
            "with the same codebook from images of the same size"
        )
    num_queries, num_locations, num_bins = query_histograms.shape
    if cell_index.shape != (num_locations,):
        raise ValueError(f"cell_index must have shape [{num_locations}], got {tuple(cell_index.shape)}")
    if pool_self_term is None:
        pool_self_term = kl_self_term(pool_histograms)
    log_query = torch.log(query_histograms * num_bins)  # [Q, L, P]
    cells = cell_index.to(query_histograms.device)
    out = query_histograms.new_empty((num_queries, pool_histograms.shape[0]))
    for start in range(0, pool_histograms.shape[0], chunk_size):
        pool = pool_histograms[start : start + chunk_size]  # [n, L, P]
        n = pool.shape[0]
        cross = torch.einsum("nlp,qlp->qnl", pool, log_query)  # sum_p p log(P q): [Q, n, L]
        kl = (pool_self_term[start : start + n].unsqueeze(0) - cross).clamp_min(0.0)  # [Q, n, L]
        block_max = kl.new_full((num_queries, n, num_cells), -math.inf)
        block_max.scatter_reduce_(2, cells.expand(num_queries, n, num_locations), kl, reduce="amax")
        out[:, start : start + n] = block_max.mean(dim=2)
    return out
