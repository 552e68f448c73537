"""PaDiM (Defard et al., ICPR workshops 2020) on any feature extractor.

Per grid position a multivariate Gaussian of the patch embedding is fitted on normal
images; a test patch scores its Mahalanobis distance to its position's Gaussian.

Two forms (``mode=``):

- ``"per_layer"`` (default, the ADPretrain release): one Gaussian per *layer* and position,
  on that layer's own grid. Each layer gives a Mahalanobis grid ``[B, h_l, w_l]``; the base
  class upsamples every grid bilinearly to the image and averages them ("upsample, mean
  over layers"), then blurs (sigma 4) and takes the max.
- ``"concatenated"`` (the original PaDiM paper): all layers resized to the largest grid by
  *nearest* interpolation (the original's ``embedding_concat`` copies each coarse cell to
  the fine cells it covers; anomalib also uses ``mode="nearest"``), concatenated along
  channels, one Gaussian per position of that grid, one score grid.

Memory of the fitted statistics (float32, 4 bytes; the Cholesky factor has the covariance's
size, the means are negligible beside it):

- per layer:     ``4 * sum_l P_l * C_l**2`` bytes (``P_l = h_l * w_l``);
- concatenated:  ``4 * P_max * (sum_l C_l)**2`` bytes.

CLIP ViT-L/14 at 224 (4 layers x 1024 channels on 16x16): 4.0 GiB per layer vs 16.0 GiB
(17.2 GB) concatenated. EfficientNet-Lite0 at 224 (24/40/112 channels on 56x56/28x28/14x14):
21.5 MiB per layer vs 373 MiB concatenated. ``padim_statistics_bytes`` computes it for any layout.

- Optional random channel subset ``num_features=`` (the original keeps 100 of ResNet-18's
  448 channels and 550 of WideResNet-50's 1792). Default ``None`` keeps all; ``"auto"``
  picks the original's count for those two widths and ``PADIM_AUTO_MAX_FEATURES`` otherwise.
  Concatenated: a subset of the concatenated channels (more than there are is an error).
  Per layer: each layer keeps at most that many of its own channels.
- Statistics: per position mean and unbiased covariance (``numpy.cov``'s ``N - 1``) plus
  ``PADIM_COV_EPS * I`` (0.01). They are accumulated in one streaming pass (sums of
  outer products of features shifted by the first batch's mean, which keeps float32
  accurate), so the training embeddings are never stored together.
- Distance: each covariance is Cholesky-factored once at fit (``cov = L L^T``); per batch
  ``z = L^-1 (x - mu)`` by a triangular solve and ``d = ||z||`` -- no explicit inverse.
- ``variant="release"`` (the released ADPretrain code, tests/release_parity/): the same statistics,
  stored as the explicit float32 inverse of each covariance (``cov_inv_g``), the Mahalanobis form
  evaluated with it in float64, grids upsampled with ``align_corners=True``, averaged, smoothed in
  float64. The release's min-max over the whole test set is the evaluation protocol's step
  (``evaluation.protocols.apply_post_processing``), not the detector's.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from ..modeling.detectors_adpretrain import DEFAULT_VARIANT, PADIM_MODES, PaDiMModule
from .base import FeatureExtractor, FeatureMapDetector

__all__ = ["PADIM_AUTO_FEATURES", "PADIM_AUTO_MAX_FEATURES", "PADIM_COV_EPS", "PaDiM", "padim_statistics_bytes"]

PADIM_COV_EPS = 0.01  # regulariser added to every covariance's diagonal
PADIM_AUTO_FEATURES = {448: 100, 1792: 550}  # original subsets: ResNet-18 (448 ch) -> 100, WRN-50 (1792) -> 550
PADIM_AUTO_MAX_FEATURES = 550  # "auto" for other widths: at most this many channels
PADIM_FACTOR_BLOCK = 16  # positions factored at a time (bounds the extra memory of the Cholesky)
FLOAT32_BYTES = 4


def padim_statistics_bytes(layer_shapes: Sequence[tuple[int, int, int]], mode: str = "per_layer") -> int:
    """Bytes of PaDiM's fitted float32 statistics (means + Cholesky factors) for ``[(C_l, h_l, w_l)]``.

    ``per_layer``: ``sum_l P_l (C_l^2 + C_l)``; ``concatenated``: ``P_max (D^2 + D)``, ``D = sum_l C_l``.
    """
    if mode not in PADIM_MODES:
        raise ValueError(f"unknown PaDiM mode {mode!r}: choose one of {PADIM_MODES}")
    if mode == "per_layer":
        values = sum(h * w * (c * c + c) for c, h, w in layer_shapes)
    else:
        d = sum(c for c, _, _ in layer_shapes)
        values = max(h * w for _, h, w in layer_shapes) * (d * d + d)
    return FLOAT32_BYTES * values


class _GaussianSums:
    """Streaming per-position sums for one embedding ``[b, D, h, w]`` -> mean and Cholesky factor (or inverse).

    ``dtype``: of the sums (``None``: the embedding's); the release variant sums in float64, as the
    release's numpy statistics (twice the memory of float32 while fitting).
    """

    def __init__(self, first: torch.Tensor, dtype: Optional[torch.dtype] = None) -> None:
        self.dtype = first.dtype if dtype is None else dtype
        x = first.to(self.dtype).flatten(2).permute(2, 0, 1)  # [P, b, D]
        self.grid = tuple(first.shape[-2:])
        self.shift = x.mean(dim=1, keepdim=True)  # [P, 1, D]: makes the sums well conditioned
        positions, dim = x.shape[0], x.shape[2]
        self.total = torch.zeros(positions, dim, dtype=x.dtype, device=x.device)  # sum of (x - shift)
        self.outer = torch.zeros(positions, dim, dim, dtype=x.dtype, device=x.device)  # sum of outer products

    def add(self, emb: torch.Tensor) -> None:
        xc = emb.to(self.dtype).flatten(2).permute(2, 0, 1) - self.shift  # [P, b, D]
        self.total += xc.sum(dim=1)
        self.outer.baddbmm_(xc.transpose(1, 2), xc)  # [P, D, b] @ [P, b, D], in place

    def finish(self, count: int, cov_eps: float, statistic: str = "cholesky") -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean [P, D], statistic [P, D, D])``: the Cholesky factors (``"cholesky"``) or the explicit
        inverses (``"cov_inv"``) of the regularised covariances; the sums' buffer becomes them."""
        centred_mean = self.total / count  # [P, D]
        # cov = (sum (x-s)(x-s)^T - n m m^T) / (n - 1) with m = mean - s, in place on `outer`.
        outer = self.outer
        outer.baddbmm_(centred_mean.unsqueeze(2), centred_mean.unsqueeze(1), alpha=-float(count))
        outer.div_(count - 1)
        outer.diagonal(dim1=1, dim2=2).add_(cov_eps)
        mean = (centred_mean + self.shift.squeeze(1)).contiguous()
        self.total = self.shift = self.outer = None
        if statistic == "cholesky":
            # factors stored transposed (L^T row-major == L column-major): the layout LAPACK's triangular
            # solve reads without copying the whole stack each batch
            return mean, _by_blocks(outer, torch.linalg.cholesky_ex, outer.transpose(1, 2), "not positive definite")
        cov = outer.float()  # the release inverts the float32 covariance, explicitly (its form)
        return mean.float(), _by_blocks(cov, torch.linalg.inv_ex, cov, "singular")


def _by_blocks(cov: torch.Tensor, decompose: Callable, out: torch.Tensor, failure: str) -> torch.Tensor:
    """``decompose`` (a ``torch.linalg.*_ex``) of ``cov [P, D, D]`` written into ``out`` (a view of cov's
    storage), a block of positions at a time: peak memory stays at one ``[P, D, D]`` buffer plus a
    block, instead of two. ``failure`` names a matrix the decomposition refuses."""
    for start in range(0, cov.shape[0], PADIM_FACTOR_BLOCK):
        result, info = decompose(cov[start : start + PADIM_FACTOR_BLOCK])
        if bool((info != 0).any()):
            raise ValueError(
                f"a PaDiM covariance is {failure} (features with NaN/inf, or cov_eps=0 with fewer images than "
                "channels): check the features or raise cov_eps"
            )
        out[start : start + PADIM_FACTOR_BLOCK].copy_(result)
    return out


class PaDiM(FeatureMapDetector):
    """PaDiM: per-position Gaussians of multi-layer features, Mahalanobis scores.

    Args:
        extractor: the feature source.
        layer_positions: positions in the extractor's list of maps to use (default: all).
        mode: ``"per_layer"`` (default; one Gaussian per layer, maps averaged, as the release)
            or ``"concatenated"`` (one Gaussian over all layers, as the original paper).
        num_features: keep a random subset of this many channels; ``None`` (default)
            keeps all, ``"auto"`` uses the original's sizes (see module docstring).
        cov_eps: diagonal regulariser (``PADIM_COV_EPS = 0.01``).
        seed: seeds the channel subset.
        variant: ``"package"`` (default; Cholesky factors, ``align_corners=False``) or ``"release"``
            (explicit inverses, ``align_corners=True``; see the module docstring).

    Scoring is ``self.module`` (``PaDiMModule``, its buffers per group ``mean_g``, ``cholesky_g``,
    ``channel_index_g``). Fitted state, one entry per *group* (a used layer in ``per_layer`` mode; the single
    concatenated embedding in ``concatenated`` mode):
        ``means``: list of ``[P_g, D_g]`` per-position means;
        ``cholesky``: list of ``[P_g, D_g, D_g]`` lower Cholesky factors of the regularised
        covariances (``cov = L L^T``; ``covariances()`` rebuilds them);
        ``channel_index``: list of ``[D_g]`` kept channels, or ``None`` where all are kept;
        ``grids``: list of ``(h_g, w_g)``, ``P_g = h_g * w_g``.
    """

    name = "padim"
    checks_grid = True  # per-position statistics: predict's grids must be fit's

    def __init__(
        self,
        extractor: FeatureExtractor,
        *,
        layer_positions: Optional[Sequence[int]] = None,
        mode: str = "per_layer",
        num_features: Union[int, str, None] = None,
        cov_eps: float = PADIM_COV_EPS,
        seed: int = 0,
        variant: str = DEFAULT_VARIANT,
        **kwargs,
    ) -> None:
        super().__init__(extractor, layer_positions=layer_positions, **kwargs)
        self.module = PaDiMModule(mode=mode, sigma=self.sigma, variant=variant)
        self.variant = variant
        if num_features is not None and num_features != "auto" and (not isinstance(num_features, int) or num_features < 1):
            raise ValueError(f"num_features must be a positive int, 'auto' or None (all channels), got {num_features!r}")
        if isinstance(cov_eps, bool) or not isinstance(cov_eps, (int, float)) or not cov_eps >= 0 or cov_eps == float("inf"):
            raise ValueError(f"cov_eps must be a finite number >= 0, got {cov_eps!r}")
        self.mode = mode
        self.num_features = num_features
        self.cov_eps = cov_eps
        self.seed = seed
        self.channel_index: list[Optional[torch.Tensor]] = []
        self.grids: list[tuple[int, int]] = []

    @property
    def means(self) -> list[torch.Tensor]:
        """Per group the fitted means ``[P_g, D_g]``."""
        return [mean for mean, _, _ in self.module.group_tensors()]

    @property
    def cholesky(self) -> list[torch.Tensor]:
        """Per group the fitted ``[P_g, D_g, D_g]`` statistic: the lower Cholesky factors of the regularised
        covariances (the release variant: their inverses)."""
        return [factor for _, factor, _ in self.module.group_tensors()]

    # -- embedding ---------------------------------------------------------------------
    def _choose_channels(self, total: int, device: torch.device, group: int = 0) -> Optional[torch.Tensor]:
        if self.num_features is None:
            return None
        if self.num_features == "auto":
            keep = PADIM_AUTO_FEATURES.get(total, min(total, PADIM_AUTO_MAX_FEATURES))
        elif self.mode == "per_layer":
            keep = min(self.num_features, total)
        else:
            keep = self.num_features
            if keep > total:
                raise ValueError(
                    f"num_features={keep} exceeds the {total} channels of the concatenated layers: "
                    f"use at most {total}, or None for all"
                )
        if keep == total:
            return None
        generator = torch.Generator().manual_seed(self.seed + group)
        return torch.randperm(total, generator=generator)[:keep].sort().values.to(device)

    def _groups(self, used: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Used layers ``[B, C_l, h_l, w_l]`` -> the maps Gaussians are fitted on, before subsetting."""
        return self.module.functions.groups([f.float() for f in used], self.mode)

    def embed(self, features: Sequence[torch.Tensor], *, fitting: bool = False) -> list[torch.Tensor]:
        """Per-layer maps of one batch -> one (channel-subset) embedding ``[B, D_g, h_g, w_g]`` per group."""
        groups = self._groups(self._select(features, fitting=fitting, check_grid=True))
        return [g if idx is None else g.index_select(1, idx.to(g.device)) for g, idx in zip(groups, self.channel_index)]

    # -- fit: streaming Gaussian statistics --------------------------------------------------
    @torch.no_grad()
    def _fit(self, feature_batches: list[list[torch.Tensor]]) -> None:
        self.fitted_layout = None
        count = sum(int(batch[0].shape[0]) for batch in feature_batches if len(batch) > 0)
        if count < 2:
            raise ValueError(
                f"PaDiM needs at least 2 normal images to estimate a covariance, got {count}: pass more training images"
            )
        sums: list[_GaussianSums] = []
        for i in range(len(feature_batches)):
            if not sums:
                groups = self._groups(self._select(feature_batches[i], fitting=True, check_grid=True))
                self.channel_index = [self._choose_channels(g.shape[1], g.device, n) for n, g in enumerate(groups)]
            embedded = self.embed(feature_batches[i])  # per group [b, D_g, h_g, w_g]
            feature_batches[i] = None  # free the raw maps as soon as they are embedded
            if not sums:
                dtype = torch.float64 if self.module.functions.statistic == "cov_inv" else None
                sums = [_GaussianSums(e, dtype) for e in embedded]
            for acc, emb in zip(sums, embedded):
                acc.add(emb)
        self.grids = [acc.grid for acc in sums]
        fitted = {}
        for g, acc in enumerate(sums):
            statistic = self.module.functions.statistic
            fitted[f"mean_{g}"], fitted[f"{statistic}_{g}"] = acc.finish(count, self.cov_eps, statistic)
            if self.channel_index[g] is not None:
                fitted[f"channel_index_{g}"] = self.channel_index[g]
        self.module.set_fitted(fitted)

    def covariances(self) -> list[torch.Tensor]:
        """The fitted (regularised) covariances per group, ``[P_g, D_g, D_g]``, rebuilt as ``L L^T``."""
        if not self.cholesky:
            raise RuntimeError("PaDiM is not fitted: call fit(normal_images) first")
        if self.module.functions.statistic == "cov_inv":
            return [torch.linalg.inv(inverse) for inverse in self.cholesky]
        return [factor @ factor.transpose(1, 2) for factor in self.cholesky]

    def statistics_bytes(self) -> int:
        """Bytes held by the fitted means and Cholesky factors."""
        return sum(t.numel() * t.element_size() for t in (*self.means, *self.cholesky))
