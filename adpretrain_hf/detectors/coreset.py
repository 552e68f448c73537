"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

PatchCore keeps 10% of the training patch features, chosen so that every discarded
feature lies close to a kept one: greedy k-center (Sener & Savarese 2018), run on a
128-d Gaussian random projection to make the distance updates cheap (Johnson-Lindenstrauss:
distances are roughly preserved).

Memory: the peer library (anomalib) builds a new ``N x d`` difference tensor each
iteration; on CPU that fragmented the heap to 24 GB. Here the only ``N``-sized buffers
(squared norms, the running min-distance and one distance vector) are allocated once and
updated in place; each iteration is one matrix-vector product (``||x - c||^2 = ||x||^2 -
2 x.c + ||c||^2``) and no ``N x d`` temporary. Everything stays on the features' device
(a GPU when the extractor runs there) and the loop never synchronises with the host.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from tqdm.auto import tqdm

__all__ = [
    "CORESET_PROJECTION_DIM",
    "CORESET_RATIO",
    "coreset_size",
    "greedy_coreset_indices",
    "greedy_k_center",
    "random_projection_matrix",
]

CORESET_RATIO = 0.1  # PatchCore: keep 10% of the training patches
CORESET_PROJECTION_DIM = 128  # PatchCore: distances for the greedy search on a 128-d projection


def coreset_size(num_features: int, ratio: float) -> int:
    """Number of kept rows: ``int(N * ratio)`` as the original, but at least one."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}: use 0.1 for PatchCore's 10%")
    return max(1, min(num_features, int(num_features * ratio)))


def random_projection_matrix(
    in_dim: int, out_dim: int, seed: int = 0, device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Gaussian random projection ``[in_dim, out_dim]`` with entries N(0, 1/out_dim).

    Drawn on the CPU from ``seed`` (the same matrix on every device), then moved.
    """
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(in_dim, out_dim, generator=generator, dtype=torch.float64) / math.sqrt(out_dim)
    return matrix.to(device=device, dtype=dtype)


@torch.no_grad()
def greedy_k_center(points: torch.Tensor, k: int, start_index: int = 0, progress: bool = False) -> torch.Tensor:
    """Greedy k-center on ``points [N, p]``: ``k`` indices, the first being ``start_index``.

    Each step adds the point farthest (squared L2) from everything chosen so far. Chosen
    points get a min-distance of -inf so they are never chosen twice, even with duplicates.

    Returns:
        ``[k]`` long tensor of row indices, on ``points.device``, in selection order.
    """
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(f"points must be a non-empty [N, p] matrix, got shape {tuple(points.shape)}")
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of points), got {k}")
    if not 0 <= start_index < n:
        raise ValueError(f"start_index must be in [0, {n}), got {start_index}")
    x = points if points.is_floating_point() else points.float()
    sq_norms = (x * x).sum(dim=1)  # [N]
    min_dist = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)  # [N], updated in place
    dist = torch.empty(n, dtype=x.dtype, device=x.device)  # [N], reused every step
    selected = torch.empty(k, dtype=torch.long, device=x.device)
    index = torch.tensor([start_index], dtype=torch.long, device=x.device)  # [1], stays on device
    neg_inf = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    for step in tqdm(range(k), desc="coreset", disable=not progress, leave=False, mininterval=0.5):
        selected[step : step + 1] = index
        center = x.index_select(0, index).squeeze(0)  # [p]
        torch.mv(x, center, out=dist)  # x.c
        dist.mul_(-2.0).add_(sq_norms).add_(sq_norms.index_select(0, index))  # ||x - c||^2
        torch.minimum(min_dist, dist, out=min_dist)
        min_dist.index_fill_(0, index, neg_inf)
        index = torch.argmax(min_dist).view(1)
    return selected


@torch.no_grad()
def greedy_coreset_indices(
    features: torch.Tensor,
    ratio: float = CORESET_RATIO,
    projection_dim: Optional[int] = CORESET_PROJECTION_DIM,
    seed: int = 0,
    start_index: Optional[int] = None,
    progress: bool = False,
) -> torch.Tensor:
    """PatchCore's coreset: indices of ``int(N * ratio)`` rows of ``features [N, d]``.

    Args:
        features: memory-bank candidates ``[N, d]`` on any device.
        ratio: fraction kept (``CORESET_RATIO = 0.1``); ``1.0`` keeps everything (no search).
        projection_dim: greedy search runs on ``features @ random_projection_matrix(d,
            projection_dim, seed)``; ``None`` or ``>= d`` searches the raw features.
        seed: seeds the projection and, with ``start_index=None``, the random start point.
        start_index: first center (default: drawn from ``seed``, as the original draws it).
    Returns:
        ``[k]`` long tensor of indices on ``features.device``.

    The start point is the first of the ``k`` kept rows (textbook k-center); anomalib draws
    it but keeps only the ``k`` rows chosen after it -- a one-row difference.
    """
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [N, d] matrix, got shape {tuple(features.shape)}")
    n, d = features.shape
    k = coreset_size(n, ratio)
    if k == n:
        return torch.arange(n, device=features.device)
    if projection_dim is not None and projection_dim < 1:
        raise ValueError(f"projection_dim must be >= 1 or None, got {projection_dim}")
    work = features.float() if features.dtype in (torch.float16, torch.bfloat16) or not features.is_floating_point() else features
    if projection_dim is not None and projection_dim < d:
        work = work @ random_projection_matrix(d, projection_dim, seed, device=work.device, dtype=work.dtype)
    if start_index is None:
        start_index = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed + 1)).item())
    return greedy_k_center(work, k, start_index, progress=progress)
