"""Which normal references the pretrained features see, and the extractor that applies them.

Shared strategies ("first", "random", "kmeans") give one set of ``K`` pool images for every
query: one :class:`~adpretrain_hf.modeling.reference_bank_adpretrain.ReferenceBank` built from the pool's cached backbone
tokens, handed to the extractor (never stored on the model).

"aligned" (appendix C) gives every image its own ``K`` references. It is implemented with
per-image banks: :class:`AlignedReferences` caches, by the image's bytes, what
:func:`~adpretrain_hf.references.match_aligned` (the matcher's histograms + KL) returns for an
image, so each image is matched once per reference seed, whichever detector asks; and
:class:`PerImageReferenceExtractor` gathers the matched pool images' cached backbone tokens
into a ``[B, K*N_l, C_l]`` bank per layer for that batch, keyed per image by its reference set
(so a feature cache keeps its projected features); the gather is lazy (``ReferenceBank.gathered``),
so only the images a cache misses pay for it. Matching happens inside the extractor, so
it also covers images a detector makes itself (GLASS's augmentations). Costs: the pool's
backbone tokens stay in memory (``N_pool * sum_l N_l*C_l`` values: about 4 MB per pool image
for a 1024-wide, 4-layer ViT at 224 px), each batch builds ``B*K`` images' worth of bank, and
every image pays one histogram + KL match against the pool. A query never references itself:
training images are in the pool, and an image matched to itself has an all-zero residual, so
``match_aligned`` skips the pool images equal to the query.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from ..extractor import ModelFeatureExtractor
from ..modeling.content_keys_adpretrain import combine_keys
from ..modeling.reference_bank_adpretrain import ReferenceBank, batch_keys
from ..references import SemanticAlignedMatcher, match_aligned, select_references
from .image_feature_cache import DirectSource, shared_bank

__all__ = ["AlignedReferences", "PerImageReferenceExtractor", "ReferencePlan", "global_features", "plan_references",
           "pretrained_extractor"]


def global_features(model: Any, pixel_values: torch.Tensor, batch_size: int, source: Any = None) -> torch.Tensor:
    """Mean-pooled backbone tokens of every tapped layer, concatenated: ``[N, sum_l C_l]`` float32 (CPU).

    The "kmeans" strategy clusters these to pick references that cover the pool's variety;
    with a feature cache as ``source`` the pool is not encoded again.
    """
    tokens = (source or DirectSource()).tokens(model, "backbone", pixel_values, None, batch_size=batch_size)
    return torch.cat([layer.float().mean(dim=1) for layer in tokens], dim=1).cpu()


class AlignedReferences:
    """Per-image semantic-aligned references over a fitted matcher (see the module docstring).

    Args:
        matcher: a :class:`SemanticAlignedMatcher` fitted on ``pool_pixel_values``.
        pool_pixel_values: ``[N_pool, 3, H, W]`` the normal pool.
        k: references per image.
        source: where the pool's backbone tokens come from (a feature cache; default: computed once here).
    """

    def __init__(self, matcher: SemanticAlignedMatcher, pool_pixel_values: torch.Tensor, k: int, source: Any = None) -> None:
        if not 1 <= k <= pool_pixel_values.shape[0]:
            raise ValueError(f"k={k} must lie in [1, {pool_pixel_values.shape[0]}] (the pool size)")
        self.matcher = matcher
        self.pool_pixel_values = pool_pixel_values
        self.k = k
        self.pool_hashes = batch_keys(pool_pixel_values)
        self.source = source or DirectSource()
        self._cache: dict[str, torch.Tensor] = {}
        self._tokens: Optional[list[torch.Tensor]] = None

    def indices(self, pixel_values: torch.Tensor, image_keys: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Pool positions of each image's references: ``[B, 3, H, W] -> LongTensor [B, k]`` (best first).

        A cache over :func:`~adpretrain_hf.references.match_aligned` (which skips the pool
        copies of the image itself), keyed by ``pixel_hash`` (``image_keys`` when the caller has
        them): each distinct image is matched once.
        """
        keys = batch_keys(pixel_values) if image_keys is None else list(image_keys)
        missing: dict[str, int] = {}  # uncached key -> its first position in the batch
        for i, key in enumerate(keys):
            if key not in self._cache:
                missing.setdefault(key, i)
        if missing:
            rows = list(missing.values())
            found = match_aligned(self.matcher, pixel_values[rows], self.k, pool_keys=self.pool_hashes, query_keys=list(missing))
            self._cache.update(zip(missing, found))
        return torch.stack([self._cache[key] for key in keys])

    def pool_tokens(self, model: Any, batch_size: int) -> list[torch.Tensor]:
        """The pool's backbone tokens per layer ``[N_pool, N_l, C_l]``, computed once."""
        if self._tokens is None:
            self._tokens = self.source.tokens(model, "backbone", self.pool_pixel_values, None, batch_size=batch_size,
                                              image_keys=self.pool_hashes)
        return self._tokens

    def bank(self, model: Any, pixel_values: torch.Tensor, batch_size: int, image_keys: Optional[Sequence[str]] = None) -> ReferenceBank:
        """Per-image banks of a batch (per layer ``[B, k*N_l, C_l]`` once read), keyed by each image's reference set."""
        idx = self.indices(pixel_values, image_keys)  # [B, k]
        keys = tuple(combine_keys([self.pool_hashes[j] for j in row.tolist()]) for row in idx)
        return ReferenceBank.gathered(self.pool_tokens(model, batch_size), idx, keys)


class PerImageReferenceExtractor:
    """A pretrained-features extractor whose references are chosen per image by :class:`AlignedReferences`.

    Same interface as :class:`~adpretrain_hf.extractor.ModelFeatureExtractor`:
    ``pixel_values [B, 3, H, W] -> list of [B, C_l, h_l, w_l]``.
    """

    def __init__(self, base: ModelFeatureExtractor, references: AlignedReferences, batch_size: int = 32) -> None:
        if not base.needs_references:
            raise ValueError(f"per-image references do not matter for {base.feature_kind!r} features: pass a 'pretrained' or 'residual' extractor")
        self.base = base
        self.references = references
        self.batch_size = batch_size
        self.feature_kind = base.feature_kind
        self.image_size = base.image_size

    @property
    def device(self) -> torch.device:
        return self.base.device

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        keys = batch_keys(pixel_values)  # once: for the matching and for the feature cache
        bank = self.references.bank(self.base.model, pixel_values, self.batch_size, keys)
        return self.base.with_references(bank)(pixel_values, image_keys=keys)


@dataclass
class ReferencePlan:
    """The references of one reference seed in one category.

    ``shared``: pool positions used by every image (first/random/kmeans), or ``None``;
    ``aligned``: the per-image references, or ``None``; ``record``: what goes into ``results.json``.
    """

    seed: int
    strategy: str
    k: int
    shared: Optional[list[int]] = None
    aligned: Optional[AlignedReferences] = None
    record: dict[str, Any] = field(default_factory=dict)


def plan_references(
    strategy: str,
    model: Any,
    pool_pixel_values: torch.Tensor,
    k: int,
    seed: int,
    *,
    pool_ids: list[str],
    pool_paths: list[Optional[str]],
    test_pixel_values: torch.Tensor,
    test_ids: list[str],
    batch_size: int,
    device: Optional[str] = None,
    aligned_feature_net: Optional[str] = None,
    source: Any = None,
) -> ReferencePlan:
    """Choose the references of one seed; "aligned" also matches the test images (recorded).

    ``source`` (a feature cache) serves the pool's backbone tokens to "kmeans" and "aligned".
    """
    if strategy == "aligned":
        pool_size = pool_pixel_values.shape[0]
        k = min(k, max(1, pool_size - 1))  # one pool image is the query itself for training images
        matcher = SemanticAlignedMatcher(feature_net=aligned_feature_net, top_k=k, device=device, seed=seed, batch_size=batch_size)
        matcher.fit(pool_pixel_values)
        aligned = AlignedReferences(matcher, pool_pixel_values, k, source)
        per_test = aligned.indices(test_pixel_values)
        record = {
            "strategy": strategy, "seed": seed, "k": k, "self_excluded": True,
            "feature_net": "random-init ResNet-18" if matcher.random_init else (
                str(aligned_feature_net) if isinstance(aligned_feature_net, (str, os.PathLike)) else type(aligned_feature_net).__name__
            ),
            "per_test_image": {tid: [pool_ids[j] for j in row.tolist()] for tid, row in zip(test_ids, per_test)},
        }
        return ReferencePlan(seed, strategy, k, aligned=aligned, record=record)
    features = global_features(model, pool_pixel_values, batch_size, source) if strategy == "kmeans" else None
    chosen = [int(i) for i in select_references(strategy, pool_pixel_values, k=k, seed=seed, global_features=features)]
    record = {
        "strategy": strategy, "seed": seed, "k": k, "pool_positions": chosen,
        "sample_ids": [pool_ids[i] for i in chosen], "paths": [pool_paths[i] for i in chosen],
    }
    return ReferencePlan(seed, strategy, k, shared=chosen, record=record)


def pretrained_extractor(
    model: Any, plan: ReferencePlan, pool_pixel_values: torch.Tensor, batch_size: int, source: Any = None, kind: str = "pretrained"
) -> Any:
    """The ``kind`` ("pretrained" or "residual") extractor with this plan's references, served by ``source``."""
    base = ModelFeatureExtractor(model, feature_kind=kind, source=source)
    if not base.needs_references:  # e.g. a non-residual ablation model
        return base
    if plan.aligned is not None:
        return PerImageReferenceExtractor(base, plan.aligned, batch_size)
    assert plan.shared is not None
    return base.with_references(shared_bank(source or DirectSource(), model, pool_pixel_values[plan.shared], batch_size))
