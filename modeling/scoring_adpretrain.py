"""Scoring math of the training-free detectors, shared by the fitting code and the Hub model.

``adpretrain_hf.detectors`` (fitting, evaluation) and ``ADPretrainDetectorModel`` (a fitted
detector loaded from a folder, possibly without the package) must score identically, so the
pure functions live here once:

- feature-map layout: ``largest_grid``, ``resize_to_grid``;
- PatchCore: locally aware patch features (``aggregate_patch_features``), the reweighted image score
  (``reweighted_scores``, paper Eq. 7) and the ``image_score`` switch (``patchcore_image_scores``);
- PaDiM: the fitted groups (``padim_groups``), per-position Mahalanobis distances (``mahalanobis_distances``).

Everything here traces to ONNX except PaDiM's triangular solve. Part of the remote-code
bundle: imports only torch.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

PATCHCORE_DIM = 1024  # the most channels kept per layer and in the final embedding
PATCHCORE_NEIGHBOURHOOD = 3  # 3x3 local-context average
PATCHCORE_REWEIGHT_NEIGHBORS = 9  # b in Eq. 7: bank neighbours of m* in the softmax
REWEIGHT_MAX_BLOCK_ELEMENTS = 1 << 26  # distance-block bound of reweighted_scores
PADIM_RESIZE_MODE = "nearest"  # how PaDiM's coarser layers reach the largest grid (original embedding_concat)


def largest_of(grids: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The ``(h, w)`` with the most positions (the first one on ties)."""
    return max(grids, key=lambda hw: hw[0] * hw[1])


def largest_grid(maps: Sequence[torch.Tensor]) -> tuple[int, int]:
    """The ``(h, w)`` of the map ``[..., h, w]`` with the most positions (the first one on ties)."""
    return largest_of([tuple(m.shape[-2:]) for m in maps])


def resize_to_grid(maps: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, C, *grid]`` (no-op when the grid already matches)."""
    if tuple(maps.shape[-2:]) == tuple(grid):
        return maps
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps, size=grid, mode=mode, **kwargs)


def layer_widths(channels: Sequence[int], dim: int) -> list[int]:
    """Per-layer widths after PatchCore's first pooling: ``min(dim, C_l)`` (pool down, never up)."""
    return [min(dim, int(c)) for c in channels]


def embedding_width(channels: Sequence[int], dim: int = PATCHCORE_DIM) -> int:
    """Final PatchCore embedding width for layers of ``channels``: ``min(dim, sum_l min(dim, C_l))``."""
    return min(dim, sum(layer_widths(channels, dim)))


@functools.lru_cache(maxsize=8)
def channel_pooling_map(channels: tuple[int, ...], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PatchCore's two channel poolings as one sparse linear map, in gather form.

    Per layer ``adaptive_avg_pool1d(C_l -> min(dim, C_l))``, then the concatenation
    ``adaptive_avg_pool1d(sum -> embedding_width)``: both are linear, so
    ``out = concat(x_l) @ W`` with ``W [sum C_l, width]``. ``W`` is built by running exactly
    those poolings on identity matrices (so it *is* their definition) and has only a few
    non-zeros per output column, so it is applied as ``K`` gathers + multiply-adds: ~5x
    faster than the pooling kernels on CPU, and no intermediate stack.

    Returns:
        ``(index [K, width] long, weight [K, width] float32)``:
        ``out[:, i] = sum_k x[:, index[k, i]] * weight[k, i]`` (CPU tensors; cached).
    """
    widths = layer_widths(channels, dim)
    stacked = torch.zeros(sum(channels), 1, sum(widths), dtype=torch.float64)
    row = col = 0
    for c, width in zip(channels, widths):
        per_layer = F.adaptive_avg_pool1d(torch.eye(c, dtype=torch.float64).unsqueeze(1), width)  # [c, 1, width]
        stacked[row : row + c, :, col : col + width] = per_layer
        row, col = row + c, col + width
    weights = F.adaptive_avg_pool1d(stacked, embedding_width(channels, dim)).squeeze(1)  # [sum C_l, width]
    k = int((weights != 0).sum(dim=0).max())
    index = weights.topk(k, dim=0).indices  # [K, width]; zero-weight padding where a column has fewer
    return index, weights.gather(0, index).float()


def aggregate_patch_features(maps: Sequence[torch.Tensor], dim: int = PATCHCORE_DIM) -> torch.Tensor:
    """Locally aware patch features: per-layer maps ``[B, C_l, h_l, w_l]`` -> ``[B, h, w, D]``.

    ``(h, w)`` is the largest grid among ``maps``; each layer is averaged over its 3x3
    neighbourhood (zero padding counted) and resized bilinearly to that grid;
    ``D = embedding_width(C_l, dim)``. When no pooling reduces anything (``sum C_l <= dim``)
    the result is the plain concatenation; otherwise the poolings run through
    ``channel_pooling_map``. The batch dimension stays symbolic (``reshape(-1, ...)``) for ONNX.
    """
    grid = largest_grid(maps)
    k = PATCHCORE_NEIGHBOURHOOD
    local = []
    for fmap in maps:
        pooled = F.avg_pool2d(fmap.float(), kernel_size=k, stride=1, padding=k // 2)  # [B, C_l, h_l, w_l]
        local.append(resize_to_grid(pooled, grid, mode="bilinear").permute(0, 2, 3, 1))  # [B, h, w, C_l]
    channels = tuple(int(f.shape[1]) for f in maps)
    x = torch.cat(local, dim=-1).reshape(-1, sum(channels))  # [B*h*w, sum C_l]
    width = embedding_width(channels, dim)
    if width == sum(channels):  # nothing is reduced: every pooling is the identity
        return x.reshape(-1, grid[0], grid[1], width)
    index, weight = channel_pooling_map(channels, dim)
    index, weight = index.to(x.device), weight.to(x.device)
    out = x.index_select(1, index[0]) * weight[0]  # [B*h*w, width]
    for j in range(1, index.shape[0]):
        out = torch.addcmul(out, x.index_select(1, index[j]), weight[j])
    return out.reshape(-1, grid[0], grid[1], width)


def reweighted_scores(
    queries: torch.Tensor,
    nn_indices: torch.Tensor,
    bank: torch.Tensor,
    num_neighbors: int = PATCHCORE_REWEIGHT_NEIGHBORS,
    max_block_elements: int = REWEIGHT_MAX_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """PatchCore's image score (paper Eq. 7) for the most anomalous patch of each image.

    For ``m_test`` (the patch with the largest NN distance ``s* = ||m_test - m*||``) and its
    nearest bank row ``m*``::

        s = (1 - exp(||m_test - m*||) / sum_{m in N_b(m*)} exp(||m_test - m||)) * s*

    where ``N_b(m*)`` are the ``b`` bank rows nearest to ``m*`` (``m*`` itself included). A
    patch whose neighbourhood in the bank is sparse (all distances alike) is down-weighted
    less than one sitting next to a dense cluster it simply missed.

    Args:
        queries: ``[B, D]`` the highest-scoring patch feature of each image.
        nn_indices: ``[B]`` their nearest bank rows.
        bank: ``[M, D]`` memory bank.
    Returns:
        ``[B]`` reweighted image scores.
    """
    if num_neighbors < 1:
        raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
    bank = bank.to(queries.device)
    b = min(num_neighbors, bank.shape[0])
    centers = bank.index_select(0, nn_indices)  # [B, D]: m*
    bank_sq = (bank * bank).sum(dim=1)
    rows = max(1, max_block_elements // bank.shape[0])
    neighbours = []
    for start in range(0, centers.shape[0], rows):  # b nearest bank rows of each m*, bounded blocks
        block = centers[start : start + rows]
        sq = bank_sq.unsqueeze(0) - 2.0 * block @ bank.T + (block * block).sum(dim=1, keepdim=True)  # [rows, M]
        neighbours.append(sq.topk(b, dim=1, largest=False).indices)
    support = bank[torch.cat(neighbours)]  # [B, b, D]
    dists = (queries.unsqueeze(1) - support).norm(dim=2)  # [B, b]: ||m_test - m||, m in N_b(m*)
    s_star = (queries - centers).norm(dim=1)  # [B]
    weight = 1.0 - torch.exp(s_star - torch.logsumexp(dists, dim=1))
    return weight * s_star


def mahalanobis_distances(embedding: torch.Tensor, mean: torch.Tensor, cholesky: torch.Tensor) -> torch.Tensor:
    """Per-position Mahalanobis distances (PaDiM).

    Args:
        embedding: ``[B, D, P]`` test embeddings (``P`` grid positions).
        mean: ``[P, D]`` per-position means.
        cholesky: ``[P, D, D]`` lower Cholesky factors of the per-position covariances.
    Returns:
        ``[B, P]`` distances ``sqrt((x - mu)^T cov^-1 (x - mu))``.
    """
    delta = embedding.to(mean.dtype).permute(2, 1, 0) - mean.unsqueeze(2)  # [P, D, B]
    z = torch.linalg.solve_triangular(cholesky, delta, upper=False)  # [P, D, B]: L^-1 (x - mu)
    return z.square().sum(dim=1).sqrt().T  # [B, P]


def patchcore_image_scores(
    image_score: str,
    distances: torch.Tensor,
    nn_indices: Optional[torch.Tensor] = None,
    embedding: Optional[torch.Tensor] = None,
    bank: Optional[torch.Tensor] = None,
    num_neighbors: int = PATCHCORE_REWEIGHT_NEIGHBORS,
    max_block_elements: int = REWEIGHT_MAX_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """PatchCore's image score ``[B]`` from the raw NN ``distances [B, P]`` (``"map_max"`` is the
    caller's: it needs the smoothed map).

    ``"max"``: the largest patch distance. ``"reweighted"``: Eq. 7 at each image's worst patch,
    which needs its ``nn_indices [B, P]``, ``embedding [B, P, D]`` and the memory ``bank [M, D]``.
    The worst patch is gathered (not indexed) so the graph traces to ONNX.
    """
    if image_score == "max":
        return distances.amax(dim=1)
    worst = distances.argmax(dim=1, keepdim=True)  # [B, 1] the most anomalous patch of each image
    d = embedding.shape[-1]
    queries = embedding.gather(1, worst.unsqueeze(-1).expand(-1, 1, d)).squeeze(1)  # [B, D]
    nearest = nn_indices.gather(1, worst).squeeze(1)  # [B]
    return reweighted_scores(queries, nearest, bank, num_neighbors, max_block_elements)


def padim_groups(maps: Sequence[torch.Tensor], mode: str) -> list[torch.Tensor]:
    """PaDiM's groups from layers ``[B, C_l, h_l, w_l]``: each layer (``"per_layer"``), else one
    ``[B, sum C_l, h, w]`` of every layer resized to the largest grid (:data:`PADIM_RESIZE_MODE`)."""
    if mode == "per_layer":
        return list(maps)
    grid = largest_grid(maps)
    return [torch.cat([resize_to_grid(f, grid, PADIM_RESIZE_MODE) for f in maps], dim=1)]
