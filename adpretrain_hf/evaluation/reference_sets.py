"""Which normal references the pretrained features see, and the extractor that applies them.

Shared strategies ("first", "random", "kmeans") give one set of ``K`` pool images for every
query: the model keeps one reference bank (``set_references``) and nothing else changes.

"aligned" (appendix C) gives every image its own ``K`` references. It is implemented with
per-image banks: :class:`AlignedReferences` matches an image (the matcher's histograms + KL,
cached by the image's bytes so each image is matched once per reference seed, whichever
detector asks), and :class:`PerImageReferenceExtractor` gathers the matched pool images'
cached backbone tokens into a ``[B, K*N_l, C_l]`` bank per layer for that batch. Matching
happens inside the extractor, so it also covers images a detector makes itself (GLASS's
augmentations). Costs: the pool's backbone tokens stay in memory (``N_pool * sum_l N_l*C_l``
values: about 4 MB per pool image for a 1024-wide, 4-layer ViT at 224 px), each batch builds
``B*K`` images' worth of bank, and every image pays one histogram + KL match against the pool.
A query never references itself: training images are in the pool, and an image matched to
itself has an all-zero residual, so the pool image equal to the query is excluded.
"""

from __future__ import annotations

import os

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..extractor import ModelFeatureExtractor
from ..references import SemanticAlignedMatcher, select_references


def pixel_hash(image: torch.Tensor) -> str:
    """A key for one preprocessed image ``[3, H, W]``: equal pixels, equal key."""
    data = image.detach().float().cpu().contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@torch.no_grad()
def backbone_tokens(model: Any, pixel_values: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Backbone patch tokens of images ``[N, 3, H, W]`` -> per layer ``[N, N_l, C_l]`` (model's device/dtype)."""
    param = next(model.parameters())
    chunks = [
        model.backbone(pixel_values[start : start + batch_size].to(device=param.device, dtype=param.dtype))
        for start in range(0, pixel_values.shape[0], batch_size)
    ]
    return [torch.cat([chunk[layer] for chunk in chunks]) for layer in range(len(chunks[0]))]


def global_features(model: Any, pixel_values: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean-pooled backbone tokens of every tapped layer, concatenated: ``[N, sum_l C_l]`` float32 (CPU).

    The "kmeans" strategy clusters these to pick references that cover the pool's variety.
    """
    return torch.cat([tokens.float().mean(dim=1) for tokens in backbone_tokens(model, pixel_values, batch_size)], dim=1).cpu()


class AlignedReferences:
    """Per-image semantic-aligned references over a fitted matcher (see the module docstring).

    Args:
        matcher: a :class:`SemanticAlignedMatcher` fitted on ``pool_pixel_values``.
        pool_pixel_values: ``[N_pool, 3, H, W]`` the normal pool.
        k: references per image.
    """

    def __init__(self, matcher: SemanticAlignedMatcher, pool_pixel_values: torch.Tensor, k: int) -> None:
        if not 1 <= k <= pool_pixel_values.shape[0]:
            raise ValueError(f"k={k} must lie in [1, {pool_pixel_values.shape[0]}] (the pool size)")
        self.matcher = matcher
        self.pool_pixel_values = pool_pixel_values
        self.k = k
        self.pool_hashes = [pixel_hash(image) for image in pool_pixel_values]
        self._cache: dict[str, torch.Tensor] = {}
        self._tokens: Optional[list[torch.Tensor]] = None

    def indices(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pool positions of each image's references: ``[B, 3, H, W] -> LongTensor [B, k]`` (best first)."""
        keys = [pixel_hash(image) for image in pixel_values]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        if missing:
            _, distances = self.matcher.match(pixel_values[missing].float().cpu(), top_k=1)  # [m, N_pool]
            for row, i in enumerate(missing):
                d = distances[row].clone()
                for j, pool_key in enumerate(self.pool_hashes):
                    if pool_key == keys[i]:
                        d[j] = float("inf")  # never the image itself
                self._cache[keys[i]] = torch.topk(d, self.k, largest=False, sorted=True).indices
        return torch.stack([self._cache[key] for key in keys])

    def pool_tokens(self, model: Any, batch_size: int) -> list[torch.Tensor]:
        """The pool's backbone tokens per layer ``[N_pool, N_l, C_l]``, computed once."""
        if self._tokens is None:
            self._tokens = backbone_tokens(model, self.pool_pixel_values, batch_size)
        return self._tokens


class PerImageReferenceExtractor:
    """A pretrained-features extractor whose references are chosen per image by :class:`AlignedReferences`.

    Same interface as :class:`~adpretrain_hf.extractor.ModelFeatureExtractor`:
    ``pixel_values [B, 3, H, W] -> list of [B, C_l, h_l, w_l]``.
    """

    def __init__(self, base: ModelFeatureExtractor, references: AlignedReferences, batch_size: int = 32) -> None:
        if base.kind != "pretrained":
            raise ValueError("per-image references only matter for pretrained features: pass a 'pretrained' extractor")
        self.base = base
        self.references = references
        self.batch_size = batch_size
        self.kind = base.kind
        self.image_size = base.image_size

    @property
    def device(self) -> torch.device:
        return self.base.device

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        model = self.base.model
        idx = self.references.indices(pixel_values)  # [B, k]
        tokens = self.references.pool_tokens(model, self.batch_size)
        banks = [layer[idx.to(layer.device)].flatten(1, 2) for layer in tokens]  # [B, k*N_l, C_l]
        previous = model.reference_bank
        model.set_reference_bank(banks)
        try:
            return self.base(pixel_values)
        finally:
            if previous is None:
                model.clear_references()
            else:
                model.set_reference_bank(previous)


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
) -> ReferencePlan:
    """Choose the references of one seed; "aligned" also matches the test images (recorded)."""
    if strategy == "aligned":
        pool_size = pool_pixel_values.shape[0]
        k = min(k, max(1, pool_size - 1))  # one pool image is the query itself for training images
        matcher = SemanticAlignedMatcher(feature_net=aligned_feature_net, top_k=k, device=device, seed=seed, batch_size=batch_size)
        matcher.fit(pool_pixel_values)
        aligned = AlignedReferences(matcher, pool_pixel_values, k)
        per_test = aligned.indices(test_pixel_values)
        record = {
            "strategy": strategy, "seed": seed, "k": k, "self_excluded": True,
            "feature_net": "random-init ResNet-18" if matcher.random_init else (
                str(aligned_feature_net) if isinstance(aligned_feature_net, (str, os.PathLike)) else type(aligned_feature_net).__name__
            ),
            "per_test_image": {tid: [pool_ids[j] for j in row.tolist()] for tid, row in zip(test_ids, per_test)},
        }
        return ReferencePlan(seed, strategy, k, aligned=aligned, record=record)
    features = global_features(model, pool_pixel_values, batch_size) if strategy == "kmeans" else None
    chosen = [int(i) for i in select_references(strategy, pool_pixel_values, k=k, seed=seed, global_features=features)]
    record = {
        "strategy": strategy, "seed": seed, "k": k, "pool_positions": chosen,
        "sample_ids": [pool_ids[i] for i in chosen], "paths": [pool_paths[i] for i in chosen],
    }
    return ReferencePlan(seed, strategy, k, shared=chosen, record=record)


def pretrained_extractor(model: Any, plan: ReferencePlan, pool_pixel_values: torch.Tensor, batch_size: int) -> Any:
    """The "w/" extractor with this plan's references applied."""
    base = ModelFeatureExtractor(model, features="pretrained")
    if not base.needs_references:  # e.g. a non-residual ablation model
        return base
    if plan.aligned is not None:
        return PerImageReferenceExtractor(base, plan.aligned, batch_size)
    assert plan.shared is not None
    base.set_references(pool_pixel_values[plan.shared])
    return base
