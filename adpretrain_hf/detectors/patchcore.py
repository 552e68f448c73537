"""PatchCore (Roth et al., CVPR 2022) on any feature extractor.

Pipeline:
1. the last 3 layers (``layer_positions=``), each averaged over its 3x3 neighbourhood (local
   context, "locally aware patch features"; avg-pool k=3, stride 1, zero padding counted,
   as both the original and anomalib);
2. every layer bilinearly resized to the largest grid among them;
3. channel pooling that only *reduces*: each layer's channel vector is pooled
   (``adaptive_avg_pool1d``) to ``min(embedding_dim, C_l)``, the layers concatenated and
   pooled again to ``min(embedding_dim, sum)`` (``embedding_dim = PATCHCORE_DIM = 1024``).
   WideResNet-50's 512 + 1024 channels become 1024; EfficientNet-Lite0's 24 + 40 + 112 = 176
   stay 176 (the plain concatenation). Pooling *up* to 1024 (what a fixed 1024 does to narrow
   backbones) only replicates channels unevenly, which weights some channels more than
   others in the distance and multiplies the nearest-neighbour work (6x for 176 channels).
   (The original pools every layer to 1024 first, so WRN-50's 512-channel layer is doubled
   before the 2048 -> 1024 reduction; here it is not widened.) The pooled concatenation
   keeps each layer's channels together, so an output dim mixes at most two layers.
4. memory bank = greedy k-center coreset of 10% of all training patches (``coreset.py``);
5. patch score = L2 distance to the nearest bank row (``nearest_neighbors(metric="l2")``:
   faiss flat L2 on CPU when installed, chunked torch otherwise, so memory stays bounded);
   one score grid on the largest grid; the base class upsamples and blurs (sigma 4) it into
   the anomaly map.
6. image score (``image_score=``): ``"reweighted"`` (default, the paper's Eq. 7 and the
   release) scales the image's *largest raw* patch NN distance by a weight from the bank's
   density around its nearest bank row (``reweighted_scores``); ``"max"`` is that largest raw
   distance unweighted; ``"map_max"`` the max of the smoothed anomaly map (not PatchCore's).

The scoring (steps 1-3, 5, 6) is ``modeling.detectors_adpretrain.PatchCoreModule``; this module fits it.

``variant="release"`` is the released ADPretrain code instead (tests/release_parity/): every used
level's 3x3 neighbourhood pooled to 1024 and the concatenation pooled to 1024, the release's
approximate greedy coreset (``release_coreset_indices``: random projection to ``projection_dim``,
``RELEASE_CORESET_STARTING_POINTS`` random starts, drawn from a generator seeded by ``seed``),
SQUARED L2, image score = max of the patch grid, map bilinear ``align_corners=False`` + sigma 4.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..modeling.detectors_adpretrain import DEFAULT_VARIANT, PATCHCORE_IMAGE_SCORES, RELEASE_VARIANT, PatchCoreModule
from ..modeling.matching_adpretrain import BACKENDS as MATCHING_BACKENDS
from ..modeling.matching_adpretrain import DEFAULT_MAX_BLOCK_ELEMENTS
from ..modeling.release_scoring_adpretrain import release_coreset_indices
from ..modeling.scoring_adpretrain import PATCHCORE_DIM, PATCHCORE_REWEIGHT_NEIGHBORS
from .base import FeatureExtractor, FeatureMapDetector
from .coreset import CORESET_PROJECTION_DIM, CORESET_RATIO, greedy_coreset_indices

__all__ = ["PATCHCORE_IMAGE_SCORES", "PATCHCORE_LAYERS", "PatchCore"]

PATCHCORE_LAYERS = 3  # default: the extractor's last 3 layers


def _release_coreset(bank: torch.Tensor, ratio: float, projection_dim: Optional[int], *, seed: int, progress: bool) -> torch.Tensor:
    """The release's approximate greedy coreset of ``bank [N, D]``, its random draws from a ``seed``-ed generator."""
    generator = torch.Generator().manual_seed(seed)
    return release_coreset_indices(bank, ratio, projection_dim or bank.shape[1], generator=generator)


#: variant -> coreset selection ``(bank [N, D], ratio, projection_dim, *, seed, progress) -> kept rows``
CORESETS = {DEFAULT_VARIANT: greedy_coreset_indices, RELEASE_VARIANT: _release_coreset}


class PatchCore(FeatureMapDetector):
    """PatchCore: coreset memory bank of locally aware patch features, NN-distance scores.

    Args:
        extractor: the feature source.
        layer_positions: positions in the extractor's list of maps (default: the last
            ``PATCHCORE_LAYERS = 3``, or all if fewer).
        embedding_dim: the most channels kept, per layer and in the final embedding
            (``PATCHCORE_DIM = 1024``); narrower features keep their width.
        coreset_ratio: fraction of training patches kept (``CORESET_RATIO = 0.1``; 1.0 keeps all).
        projection_dim: width of the random projection the coreset search runs on (128).
        image_score: ``"reweighted"`` (Eq. 7 on the largest raw NN distance; the package variant's
            default), ``"max"`` (largest raw NN distance; the release variant's default) or
            ``"map_max"`` (max of the smoothed map); ``None``: the variant's default.
        num_neighbors: ``b`` of Eq. 7 (9).
        backend: nearest-neighbour backend, ``"auto" | "torch" | "faiss"``.
        max_block_elements: bound on the torch backend's distance block (memory for big banks).
        seed: seeds the coreset's projection and start point(s).
        variant: ``"package"`` (default) or ``"release"`` (the released code; see the module docstring).

    Scoring is ``self.module`` (``PatchCoreModule``); after ``fit`` its ``memory_bank [M, D]``
    (also ``self.memory_bank``) is on the features' device, ``D = embedding_width``
    (``min(embedding_dim, sum_l min(embedding_dim, C_l))``; the release variant: ``embedding_dim``).
    """

    name = "patchcore"
    default_last_positions = PATCHCORE_LAYERS

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        layer_positions: Optional[Sequence[int]] = None,
        embedding_dim: int = PATCHCORE_DIM,
        coreset_ratio: float = CORESET_RATIO,
        projection_dim: Optional[int] = CORESET_PROJECTION_DIM,
        image_score: Optional[str] = None,
        num_neighbors: int = PATCHCORE_REWEIGHT_NEIGHBORS,
        backend: str = "auto",
        max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
        seed: int = 0,
        variant: str = DEFAULT_VARIANT,
        **kwargs,
    ) -> None:
        super().__init__(extractor, layer_positions=layer_positions, **kwargs)
        if isinstance(coreset_ratio, bool) or not isinstance(coreset_ratio, (int, float)) or not 0.0 < coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {coreset_ratio!r}: use 0.1 for PatchCore's 10%")
        if projection_dim is not None and (isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or projection_dim < 1):
            raise ValueError(f"projection_dim must be a positive int or None (no projection), got {projection_dim!r}")
        if backend == "traceable" or backend not in MATCHING_BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose one of ('auto', 'torch', 'faiss')")
        self.module = PatchCoreModule(
            embedding_dim=embedding_dim, image_score=image_score, num_neighbors=num_neighbors, backend=backend,
            max_block_elements=max_block_elements, sigma=self.sigma, variant=variant,
        )
        self.variant = variant
        self.embedding_dim = embedding_dim
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.num_neighbors = num_neighbors
        self.backend = backend
        self.max_block_elements = max_block_elements
        self.seed = seed

    @property
    def image_score(self) -> str:
        """The image-score rule (``PATCHCORE_IMAGE_SCORES``); the module's, so setting it after fit rescores."""
        return self.module.image_score_rule

    @image_score.setter
    def image_score(self, rule: str) -> None:
        if rule not in PATCHCORE_IMAGE_SCORES:
            raise ValueError(f"unknown image_score {rule!r}: choose one of {PATCHCORE_IMAGE_SCORES}")
        self.module.image_score_rule = rule

    @property
    def memory_bank(self) -> Optional[torch.Tensor]:
        """The fitted memory bank ``[M, D]`` (None before ``fit``)."""
        return self.module._buffers.get("memory_bank")

    def embed(self, features: Sequence[torch.Tensor], *, fitting: bool = False) -> torch.Tensor:
        """The extractor's per-layer maps of one batch -> patch embeddings ``[B, h, w, D]``."""
        return self.module.embed(self._select(features, fitting=fitting, check_grid=False))

    @torch.no_grad()
    def _fit(self, feature_batches: list[list[torch.Tensor]]) -> None:
        self.fitted_layout = None
        # Validate every batch first and count the images, so the bank is allocated once (no cat copy);
        # the first batch's embedding gives the rows per image and the width (the variant's).
        images = [int(self._select(batch, fitting=True, check_grid=False)[0].shape[0]) for batch in feature_batches]
        bank = None
        start = 0
        for i in range(len(images)):
            emb = self.embed(feature_batches[i], fitting=True)  # [b, h, w, D]
            rows = emb.reshape(-1, emb.shape[-1])
            if bank is None:
                per_image = emb.shape[1] * emb.shape[2]
                bank = torch.empty(sum(images) * per_image, emb.shape[-1], dtype=rows.dtype, device=rows.device)  # [N, D]
            bank[start : start + rows.shape[0]] = rows
            start += rows.shape[0]
            feature_batches[i] = None  # free the raw maps as soon as they are embedded
        keep = CORESETS[self.variant](bank, self.coreset_ratio, self.projection_dim, seed=self.seed, progress=self.progress)
        self.module.set_fitted({"memory_bank": bank if keep.numel() == bank.shape[0] else bank.index_select(0, keep)})
