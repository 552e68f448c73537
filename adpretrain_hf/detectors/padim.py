"""PaDiM (Defard et al., ICPR workshops 2020) on any feature extractor.

Per grid position a multivariate Gaussian of the patch embedding is fitted on normal
images; a test patch scores its Mahalanobis distance to its position's Gaussian.

- Embedding: all layers (``layers=``), each resized to the largest grid by *nearest*
  interpolation and concatenated along channels. The original's ``embedding_concat``
  (unfold / fold) copies each coarse cell to the fine cells it covers, which is nearest
  upsampling; anomalib also uses ``mode="nearest"``.
- Optional random channel subset ``num_features=`` (the original keeps 100 of ResNet-18's
  448 channels and 550 of WideResNet-50's 1792). Default ``None`` keeps all; ``"auto"``
  picks the original's count for those two widths and ``PADIM_AUTO_MAX_FEATURES`` otherwise.
- Statistics: per position mean and unbiased covariance (``numpy.cov``'s ``N - 1``) plus
  ``PADIM_COV_EPS * I`` (0.01). They are accumulated in one streaming pass (sums of
  outer products of features shifted by the first batch's mean, which keeps float32
  accurate), so the training embeddings are never stored together.
- Distance: the covariance is Cholesky-factored once at fit (``cov = L L^T``); per batch
  ``z = L^-1 (x - mu)`` by a triangular solve and ``d = ||z||`` -- no explicit inverse.

The reference notes' "upsample, mean over layers" has nothing to average here: PaDiM's
layers are concatenated into one embedding, so it produces one score grid (the largest
grid); the base class upsamples it, blurs it (sigma 4) and takes the max.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..modeling.scoring_adpretrain import mahalanobis_distances
from .base import FeatureExtractor
from .featurenorm import FeatureMapDetector, largest_grid, resize_to_grid

__all__ = [
    "PADIM_AUTO_FEATURES",
    "PADIM_AUTO_MAX_FEATURES",
    "PADIM_COV_EPS",
    "PADIM_RESIZE_MODE",
    "PaDiM",
    "mahalanobis_distances",
]

PADIM_COV_EPS = 0.01  # regulariser added to every covariance's diagonal
PADIM_RESIZE_MODE = "nearest"  # how coarser layers reach the largest grid (original embedding_concat)
PADIM_AUTO_FEATURES = {448: 100, 1792: 550}  # original subsets: ResNet-18 (448 ch) -> 100, WRN-50 (1792) -> 550
PADIM_AUTO_MAX_FEATURES = 550  # "auto" for other widths: at most this many channels
PADIM_FACTOR_BLOCK = 16  # positions factored at a time (bounds the extra memory of the Cholesky)


class PaDiM(FeatureMapDetector):
    """PaDiM: per-position Gaussians of concatenated multi-layer features, Mahalanobis scores.

    Args:
        extractor: the feature source.
        layers: layer indices to concatenate (default: all).
        num_features: keep a random subset of this many embedding channels; ``None`` (default)
            keeps all, ``"auto"`` uses the original's sizes (see module docstring).
        cov_eps: diagonal regulariser (``PADIM_COV_EPS = 0.01``).
        seed: seeds the channel subset.

    After ``fit``: ``mean [P, D]``, ``cholesky [P, D, D]`` (``P = h*w`` of the largest grid),
    ``channel_index [D]`` (or ``None`` when all channels are kept) and ``grid (h, w)``.
    """

    name = "padim"

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        layers: Optional[Sequence[int]] = None,
        num_features: Union[int, str, None] = None,
        cov_eps: float = PADIM_COV_EPS,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(extractor, layers=layers, **kwargs)
        if num_features is not None and num_features != "auto" and (not isinstance(num_features, int) or num_features < 1):
            raise ValueError(f"num_features must be a positive int, 'auto' or None (all channels), got {num_features!r}")
        if cov_eps < 0:
            raise ValueError(f"cov_eps must be >= 0, got {cov_eps}")
        self.num_features = num_features
        self.cov_eps = cov_eps
        self.seed = seed
        self.channel_index: Optional[torch.Tensor] = None
        self.mean: Optional[torch.Tensor] = None
        self.cholesky: Optional[torch.Tensor] = None
        self.grid: Optional[tuple[int, int]] = None

    def export_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """Means ``[P, D]``, lower Cholesky factors ``[P, D, D]`` and the channel subset ``[D]``."""
        settings, tensors = super().export_state()
        tensors.update(mean=self.mean, cholesky=self.cholesky.contiguous())
        if self.channel_index is not None:
            tensors["channel_index"] = self.channel_index
        return settings, tensors

    # -- embedding ---------------------------------------------------------------------
    def _choose_channels(self, total: int, device: torch.device) -> Optional[torch.Tensor]:
        if self.num_features is None:
            return None
        if self.num_features == "auto":
            keep = PADIM_AUTO_FEATURES.get(total, min(total, PADIM_AUTO_MAX_FEATURES))
        else:
            keep = self.num_features
            if keep > total:
                raise ValueError(
                    f"num_features={keep} exceeds the {total} channels of the concatenated layers: "
                    f"use at most {total}, or None for all"
                )
        if keep == total:
            return None
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(total, generator=generator)[:keep].sort().values.to(device)

    def embed(self, features: Sequence[torch.Tensor], *, fitting: bool = False) -> torch.Tensor:
        """Per-layer maps of one batch -> concatenated (and subset) embedding ``[B, D, h, w]``."""
        used = self._select(features, fitting=fitting, check_grid=True)
        grid = largest_grid(used)
        emb = torch.cat([resize_to_grid(f.float(), grid, PADIM_RESIZE_MODE) for f in used], dim=1)  # [B, C, h, w]
        if self.channel_index is not None:
            emb = emb.index_select(1, self.channel_index.to(emb.device))
        return emb

    # -- fit: streaming Gaussian statistics --------------------------------------------------
    @torch.no_grad()
    def _fit(self, feature_batches: list[list[torch.Tensor]]) -> None:
        self.fitted_layout, self.channel_index = None, None
        count = sum(int(batch[0].shape[0]) for batch in feature_batches if len(batch) > 0)
        if count < 2:
            raise ValueError(
                f"PaDiM needs at least 2 normal images to estimate a covariance, got {count}: pass more training images"
            )
        shift = total = outer = None
        for i in range(len(feature_batches)):
            used = self._select(feature_batches[i], fitting=True, check_grid=True)
            if shift is None:
                self.channel_index = self._choose_channels(sum(f.shape[1] for f in used), used[0].device)
            emb = self.embed(feature_batches[i])  # [b, D, h, w]
            feature_batches[i] = None  # free the raw maps as soon as they are embedded
            x = emb.flatten(2).permute(2, 0, 1)  # [P, b, D]
            if shift is None:
                self.grid = tuple(emb.shape[-2:])
                shift = x.mean(dim=1, keepdim=True)  # [P, 1, D]: makes the sums well conditioned
                positions, dim = x.shape[0], x.shape[2]
                total = torch.zeros(positions, dim, dtype=x.dtype, device=x.device)  # sum of (x - shift)
                outer = torch.zeros(positions, dim, dim, dtype=x.dtype, device=x.device)  # sum of outer products
            xc = x - shift
            total += xc.sum(dim=1)
            outer.baddbmm_(xc.transpose(1, 2), xc)  # [P, D, b] @ [P, b, D], in place
        centred_mean = total / count  # [P, D]
        # cov = (sum (x-s)(x-s)^T - n m m^T) / (n - 1) with m = mean - s, in place on `outer`.
        outer.baddbmm_(centred_mean.unsqueeze(2), centred_mean.unsqueeze(1), alpha=-float(count))
        outer.div_(count - 1)
        outer.diagonal(dim1=1, dim2=2).add_(self.cov_eps)
        self.mean = (centred_mean + shift.squeeze(1)).contiguous()
        del total, shift, centred_mean
        self.cholesky = self._factor_in_place(outer)  # [P, D, D]

    @staticmethod
    def _factor_in_place(cov: torch.Tensor) -> torch.Tensor:
        """Cholesky factors of ``cov [P, D, D]`` written over it, a block of positions at a time.

        Peak memory stays at one ``[P, D, D]`` buffer plus a block, instead of two buffers.
        The factors are stored transposed (``L^T`` row-major == ``L`` column-major), the
        layout LAPACK's triangular solve reads without copying the whole stack each batch.
        """
        factors = cov.transpose(1, 2)  # a view; writes below go to cov's storage
        for start in range(0, cov.shape[0], PADIM_FACTOR_BLOCK):
            block, info = torch.linalg.cholesky_ex(cov[start : start + PADIM_FACTOR_BLOCK])
            if bool((info != 0).any()):
                raise ValueError(
                    "a PaDiM covariance is not positive definite (features with NaN/inf, or cov_eps=0 with "
                    "fewer images than channels): check the features or raise cov_eps"
                )
            factors[start : start + PADIM_FACTOR_BLOCK].copy_(block)
        return factors

    def covariance(self) -> torch.Tensor:
        """The fitted (regularised) covariances ``[P, D, D]``, rebuilt as ``L L^T``."""
        if self.cholesky is None:
            raise RuntimeError("PaDiM is not fitted: call fit(normal_images) first")
        return self.cholesky @ self.cholesky.transpose(1, 2)

    # -- predict -----------------------------------------------------------------------------
    def _score_grids(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        emb = self.embed(features)  # [B, D, h, w]
        b, d, h, w = emb.shape
        dist = mahalanobis_distances(emb.reshape(b, d, h * w), self.mean, self.cholesky)  # [B, P]
        return [dist.view(b, h, w)]
