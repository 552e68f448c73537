"""One entry point for choosing few-shot normal references: ``select_references(strategy, ...)``.

Strategies (appendix C and section 4.4's reference-set sensitivity):

==========  =====================================================  ==========================
name        what                                                   returns
==========  =====================================================  ==========================
first       the pool's first ``k`` images (the release's habit)    ``list[int]`` (``k``)
random      ``k`` distinct images drawn with ``seed``              ``list[int]`` (``k``)
kmeans      KMeans-diverse picks on global features                ``list[int]`` (``k``)
aligned     per-query semantic-aligned matches (Eqs. 8-9), never   ``LongTensor [Q, k]``
            the query itself (:func:`match_aligned`)
==========  =====================================================  ==========================

The shared strategies give one reference set for every query; "aligned" gives each query its
own. Strategies live in :data:`REFERENCE_STRATEGIES` (name -> function), so adding one is one
function and one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..modeling.content_keys_adpretrain import pixel_hash
from .aligned import SemanticAlignedMatcher
from .kmeans import kmeans_diverse_references

References = Union[list[int], torch.Tensor]


@dataclass(frozen=True)
class SelectionRequest:
    """Everything a strategy may use; each strategy reads what it needs and checks it."""

    pool_pixel_values: torch.Tensor  # [N, 3, H, W]
    k: int
    seed: int
    query_pixel_values: Optional[torch.Tensor]  # [Q, 3, H, W]
    global_features: Optional[Union[torch.Tensor, np.ndarray]]  # [N, D]
    matcher: Optional[SemanticAlignedMatcher]
    exclude_self: bool = True  # "aligned": a query never gets a pool image equal to itself

    @property
    def num_pool(self) -> int:
        return self.pool_pixel_values.shape[0]


def _first(request: SelectionRequest) -> list[int]:
    return list(range(request.k))


def _random(request: SelectionRequest) -> list[int]:
    generator = torch.Generator().manual_seed(request.seed)
    return torch.randperm(request.num_pool, generator=generator)[: request.k].tolist()


def _kmeans(request: SelectionRequest) -> list[int]:
    features = request.global_features
    if features is None:
        if request.matcher is None:
            raise ValueError(
                "strategy 'kmeans' needs global_features=[N, D] (e.g. mean-pooled backbone features of the "
                "pool) or a matcher= whose early features are mean-pooled instead"
            )
        features = request.matcher.extract_features(request.pool_pixel_values).mean(dim=(2, 3))  # [N, C1]
    if features.shape[0] != request.num_pool:
        raise ValueError(f"global_features has {features.shape[0]} rows but the pool has {request.num_pool} images")
    return kmeans_diverse_references(features, k=request.k, seed=request.seed)


def match_aligned(
    matcher: SemanticAlignedMatcher,
    query_pixel_values: torch.Tensor,
    k: int,
    *,
    pool_keys: Optional[Sequence[str]] = None,
    query_keys: Optional[Sequence[str]] = None,
) -> torch.Tensor:
    """Per query, the ``k`` best aligned pool images, never the query itself: ``LongTensor [Q, k]``.

    The one implementation behind ``select_references("aligned")`` and the evaluation's
    per-image references. Why the exclusion: training images are also in the pool, and an
    image referencing itself has an all-zero residual. "Itself" means equal pixels
    (:func:`pixel_hash`), so every pool copy of the query is skipped.

    Args:
        matcher: fitted on the pool. query_pixel_values: ``[Q, 3, H, W]``.
        k: references per query, ``1 <= k <=`` the pool images a query may use.
        pool_keys: ``pixel_hash`` of each pool image, in fitting order; ``None``: no exclusion
            (the matcher's plain top-``k``).
        query_keys: ``pixel_hash`` of each query when the caller has them (else computed).
    """
    exclude = None
    if pool_keys is not None:
        if len(pool_keys) != matcher.num_pool:
            raise ValueError(
                f"pool_keys has {len(pool_keys)} keys but the matcher was fitted on {matcher.num_pool} images: "
                "pass one key per pool image"
            )
        if query_keys is None:
            query_keys = [pixel_hash(image) for image in query_pixel_values]
        elif len(query_keys) != len(query_pixel_values):
            raise ValueError(
                f"query_keys has {len(query_keys)} keys for {len(query_pixel_values)} queries: pass one key per query, or none"
            )
        positions: dict[str, list[int]] = {}
        for j, key in enumerate(pool_keys):
            positions.setdefault(key, []).append(j)
        exclude = [positions.get(key, []) for key in query_keys]
    indices, _ = matcher.match(query_pixel_values, top_k=k, exclude=exclude)
    return indices


def _aligned(request: SelectionRequest) -> torch.Tensor:
    if request.query_pixel_values is None:
        raise ValueError("strategy 'aligned' matches per query: pass query_pixel_values=[Q, 3, H, W]")
    matcher = request.matcher
    if matcher is None:
        matcher = SemanticAlignedMatcher(top_k=request.k, seed=request.seed)
    if not matcher.is_fitted:
        matcher.fit(request.pool_pixel_values)
    elif matcher.num_pool != request.num_pool:
        raise ValueError(
            f"the matcher was fitted on {matcher.num_pool} images but the pool has {request.num_pool}: "
            "pass an unfitted matcher, or the pool it was fitted on"
        )
    pool_keys = [pixel_hash(image) for image in request.pool_pixel_values] if request.exclude_self else None
    return match_aligned(matcher, request.query_pixel_values, request.k, pool_keys=pool_keys)


REFERENCE_STRATEGIES: dict[str, Callable[[SelectionRequest], References]] = {
    "first": _first,
    "random": _random,
    "kmeans": _kmeans,
    "aligned": _aligned,
}
"""Strategy name -> ``fn(SelectionRequest) -> list[int] | LongTensor [Q, k]``."""


def select_references(
    strategy: str,
    pool_pixel_values: torch.Tensor,
    k: int = 8,
    seed: int = 0,
    query_pixel_values: Optional[torch.Tensor] = None,
    global_features: Optional[Union[torch.Tensor, np.ndarray]] = None,
    matcher: Optional[SemanticAlignedMatcher] = None,
    exclude_self: bool = True,
) -> References:
    """Choose ``k`` normal reference images from a pool.

    Args:
        strategy: a key of :data:`REFERENCE_STRATEGIES`.
        pool_pixel_values: ``[N, 3, H, W]`` preprocessed normal images.
        k: references per query (the paper evaluates with 8), ``1 <= k <= N``.
        seed: for "random" and the KMeans of "kmeans" / "aligned".
        query_pixel_values: ``[Q, 3, H, W]``, required by "aligned".
        global_features: ``[N, D]`` for "kmeans" (else the matcher's mean-pooled features).
        matcher: a :class:`SemanticAlignedMatcher` for "aligned" (fitted on this pool, or
            unfitted and fitted here); default: a new one with a random-init ResNet-18 (warns).
        exclude_self: "aligned" only: a query never gets a pool image with its own pixels
            (see :func:`match_aligned`); ``False``: the matcher's plain top-``k``.

    Returns:
        "first" / "random" / "kmeans": ``list[int]`` of ``k`` distinct pool indices, shared by
        all queries. "aligned": ``LongTensor [Q, k]``, row ``q`` the pool indices for query
        ``q``, best aligned first (a query found in the pool needs ``k <= N - 1``).
    """
    if strategy not in REFERENCE_STRATEGIES:
        raise ValueError(f"unknown reference strategy {strategy!r}: choose one of {sorted(REFERENCE_STRATEGIES)}")
    if not isinstance(pool_pixel_values, torch.Tensor) or pool_pixel_values.dim() != 4:
        raise ValueError(
            "pool_pixel_values must be a [N, 3, H, W] tensor of normal images, got "
            f"{tuple(pool_pixel_values.shape) if isinstance(pool_pixel_values, torch.Tensor) else type(pool_pixel_values).__name__}"
        )
    num_pool = pool_pixel_values.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_pool:
        raise ValueError(f"cannot select k={k!r} references from a pool of {num_pool} images: use 1 <= k <= {num_pool}")
    request = SelectionRequest(pool_pixel_values, k, seed, query_pixel_values, global_features, matcher, exclude_self)
    return REFERENCE_STRATEGIES[strategy](request)
