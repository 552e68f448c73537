"""PatchCore (Roth et al., CVPR 2022) on any feature extractor.

Pipeline, as the original:
1. the last 3 layers (``layers=``), each averaged over its 3x3 neighbourhood (local
   context, "locally aware patch features"; avg-pool k=3, stride 1, zero padding counted,
   as both the original and anomalib);
2. every layer bilinearly resized to the largest grid among them;
3. each layer's channel vector pooled to ``PATCHCORE_DIM = 1024`` (``adaptive_avg_pool1d``
   over channels), the ``L`` vectors stacked and the stack flattened and pooled again to
   1024. (The original's quirk, kept: pooling the flattened ``[L, 1024]`` stack means output
   dims ``[i*L, (i+1)*L)`` of the stack feed output dim ``i``, so the first third of the
   embedding summarises layer 1, and so on.)
4. memory bank = greedy k-center coreset of 10% of all training patches (``coreset.py``);
5. patch score = L2 distance to the nearest bank row (``nearest_neighbors(metric="l2")``:
   faiss flat L2 on CPU when installed, chunked torch otherwise, so memory stays bounded);
   one score grid on the largest grid; the base class upsamples, blurs (sigma 4), takes max.

``reweight=True`` replaces the image score by the paper's Eq. 7 (see ``reweighted_scores``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..modeling.matching_adpretrain import DEFAULT_MAX_BLOCK_ELEMENTS, nearest_neighbors
from ..modeling.scoring_adpretrain import (
    PATCHCORE_DIM,
    PATCHCORE_NEIGHBOURHOOD,
    PATCHCORE_REWEIGHT_NEIGHBORS,
    aggregate_patch_features,
    channel_pooling_map,
    reweighted_scores,
)
from .base import FeatureExtractor
from .coreset import CORESET_PROJECTION_DIM, CORESET_RATIO, greedy_coreset_indices
from .featurenorm import FeatureMapDetector, largest_grid

__all__ = [
    "PATCHCORE_DIM",
    "PATCHCORE_LAYERS",
    "PATCHCORE_NEIGHBOURHOOD",
    "PATCHCORE_REWEIGHT_NEIGHBORS",
    "PatchCore",
    "aggregate_patch_features",
    "channel_pooling_map",
    "reweighted_scores",
]

PATCHCORE_LAYERS = 3  # default: the extractor's last 3 layers


class PatchCore(FeatureMapDetector):
    """PatchCore: coreset memory bank of locally aware patch features, NN-distance scores.

    Args:
        extractor: the feature source.
        layers: layer indices (default: the last ``PATCHCORE_LAYERS = 3``, or all if fewer).
        embed_dim: embedding width after pooling (``PATCHCORE_DIM = 1024``).
        coreset_ratio: fraction of training patches kept (``CORESET_RATIO = 0.1``; 1.0 keeps all).
        projection_dim: width of the random projection the coreset search runs on (128).
        reweight: image score by Eq. 7 of the paper instead of the max of the smoothed map.
        num_neighbors: ``b`` of Eq. 7 (9).
        backend: nearest-neighbour backend, ``"auto" | "torch" | "faiss"``.
        max_block_elements: bound on the torch backend's distance block (memory for big banks).
        seed: seeds the coreset's projection and start point.

    After ``fit``: ``memory_bank [M, embed_dim]`` on the features' device.
    """

    name = "patchcore"
    default_last_layers = PATCHCORE_LAYERS

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        layers: Optional[Sequence[int]] = None,
        embed_dim: int = PATCHCORE_DIM,
        coreset_ratio: float = CORESET_RATIO,
        projection_dim: Optional[int] = CORESET_PROJECTION_DIM,
        reweight: bool = False,
        num_neighbors: int = PATCHCORE_REWEIGHT_NEIGHBORS,
        backend: str = "auto",
        max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(extractor, layers=layers, **kwargs)
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        if not 0.0 < coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio}: use 0.1 for PatchCore's 10%")
        if num_neighbors < 1:
            raise ValueError(f"num_neighbors must be >= 1, got {num_neighbors}")
        if backend not in ("auto", "torch", "faiss"):
            raise ValueError(f"unknown backend {backend!r}: choose 'auto', 'torch' or 'faiss'")
        self.embed_dim = embed_dim
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.reweight = reweight
        self.num_neighbors = num_neighbors
        self.backend = backend
        self.max_block_elements = max_block_elements
        self.seed = seed
        self.memory_bank: Optional[torch.Tensor] = None
        self._last: Optional[tuple] = None  # (features, embedding, nn values, nn indices) of the last batch

    def export_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """Settings of the scoring path and the memory bank ``[M, embed_dim]``."""
        settings, tensors = super().export_state()
        settings.update(embed_dim=self.embed_dim, reweight=self.reweight, num_neighbors=self.num_neighbors)
        tensors["memory_bank"] = self.memory_bank
        return settings, tensors

    def embed(self, features: Sequence[torch.Tensor], *, fitting: bool = False) -> torch.Tensor:
        """The extractor's per-layer maps of one batch -> patch embeddings ``[B, h, w, embed_dim]``."""
        used = self._select(features, fitting=fitting, check_grid=False)
        return aggregate_patch_features(used, self.embed_dim)

    @torch.no_grad()
    def _fit(self, feature_batches: list[list[torch.Tensor]]) -> None:
        self.fitted_layout = None
        # Validate every batch first and size the bank, so it is allocated once (no cat copy).
        sizes = []
        for batch in feature_batches:
            used = self._select(batch, fitting=True, check_grid=False)
            h, w = largest_grid(used)
            sizes.append(int(used[0].shape[0]) * h * w)
        bank = None
        start = 0
        for i, size in enumerate(sizes):
            rows = self.embed(feature_batches[i], fitting=True).reshape(size, self.embed_dim)
            if bank is None:
                bank = torch.empty(sum(sizes), self.embed_dim, dtype=rows.dtype, device=rows.device)  # [N, D]
            bank[start : start + size] = rows
            start += size
            feature_batches[i] = None  # free the raw maps as soon as they are embedded
        keep = greedy_coreset_indices(
            bank, self.coreset_ratio, self.projection_dim, seed=self.seed, progress=self.progress
        )
        self.memory_bank = bank if keep.numel() == bank.shape[0] else bank.index_select(0, keep)
        self._last = None

    def _nearest(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n, D]`` -> (L2 distance to the nearest bank row ``[n]``, its index ``[n]``)."""
        sq, idx = nearest_neighbors(
            embedding, self.memory_bank, metric="l2", backend=self.backend, max_block_elements=self.max_block_elements
        )
        return sq.clamp_min(0.0).sqrt(), idx

    def _score_grids(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        emb = self.embed(features)  # [B, h, w, D]
        b, h, w, d = emb.shape
        flat = emb.reshape(-1, d)
        dist, idx = self._nearest(flat)
        # Kept for _image_scores (called right after on the same batch) when reweighting.
        self._last = (features, flat.view(b, h * w, d), dist.view(b, h * w), idx.view(b, h * w)) if self.reweight else None
        return [dist.view(b, h, w)]

    def _image_scores(self, maps: torch.Tensor, grids: list[torch.Tensor], features: Sequence[torch.Tensor]) -> torch.Tensor:
        if not self.reweight:
            return super()._image_scores(maps, grids, features)
        if self._last is None or self._last[0] is not features:
            raise RuntimeError("internal: reweighting needs _score_grids to run on the same batch first")
        _, emb, dist, idx = self._last
        self._last = None
        rows = torch.arange(emb.shape[0], device=emb.device)
        worst = dist.argmax(dim=1)  # [B] the most anomalous patch of each image
        return reweighted_scores(
            emb[rows, worst], idx[rows, worst], self.memory_bank, self.num_neighbors, self.max_block_elements
        )
