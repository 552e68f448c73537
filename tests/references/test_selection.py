"""Reference selection (references/selection.py): the strategy registry ``select_references`` and
``match_aligned`` (per query the K best aligned pool images, never the query itself) against a
brute force over the matcher's distances; the evaluation's cached ``AlignedReferences`` with it.

The synthetic pool, the ResNet-18 and the fitted matcher are fixtures of tests/references/conftest.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from adpretrain_hf.references import (
    REFERENCE_STRATEGIES,
    kmeans_diverse_references,
    match_aligned,
    select_references,
)
from adpretrain_hf.evaluation.reference_sets import AlignedReferences
from adpretrain_hf.modeling.content_keys_adpretrain import pixel_hash


def test_select_references_strategies(fitted, synthetic):
    pool, queries = synthetic[0], synthetic[2][:3]
    assert select_references("first", pool, k=5) == [0, 1, 2, 3, 4]
    random_picks = select_references("random", pool, k=8, seed=1)
    assert len(set(random_picks)) == 8 and all(0 <= i < 40 for i in random_picks)
    assert random_picks == select_references("random", pool, k=8, seed=1) != select_references("random", pool, k=8, seed=2)
    features = torch.randn(40, 6, generator=torch.Generator().manual_seed(5))
    assert select_references("kmeans", pool, k=4, global_features=features) == kmeans_diverse_references(features, k=4)
    aligned = select_references("aligned", pool, k=3, query_pixel_values=queries, matcher=fitted)
    assert isinstance(aligned, torch.Tensor) and aligned.shape == (3, 3)
    assert torch.equal(aligned, fitted.match(queries, top_k=3)[0])  # new draws: not in the pool


def test_select_references_errors(fitted, synthetic):
    pool = synthetic[0]
    with pytest.raises(ValueError, match="unknown reference strategy") as error:
        select_references("nearest", pool)
    assert all(name in str(error.value) for name in REFERENCE_STRATEGIES)
    with pytest.raises(ValueError, match="k=41"):
        select_references("first", pool, k=41)
    with pytest.raises(ValueError, match="global_features"):
        select_references("kmeans", pool)
    with pytest.raises(ValueError, match="query_pixel_values"):
        select_references("aligned", pool, matcher=fitted)
    with pytest.raises(ValueError, match="fitted on 40 images"):
        select_references("aligned", pool[:10], k=2, query_pixel_values=pool[:1], matcher=fitted)


# -- "aligned": per query the K best pool images, never the query itself -------------------------
def brute_force_aligned(matcher, queries: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
    """The matcher's distances, every pool image pixel-equal to the query masked by hand, stable sort: ``[Q, k]``."""
    _, distances = matcher.match(queries, top_k=1)  # [Q, N]
    rows = []
    for q in range(queries.shape[0]):
        d = distances[q].clone()
        for j in range(pool.shape[0]):
            if torch.equal(queries[q], pool[j]):
                d[j] = math.inf
        rows.append(torch.argsort(d, stable=True)[:k])
    return torch.stack(rows)


def test_match_aligned_skips_the_query_itself(fitted, synthetic):
    pool, queries = synthetic[0], synthetic[2]
    batch = torch.cat([pool[[3, 17]], queries[:2], pool[[3]]])  # two pool images, two new draws, a repeat
    plain = fitted.match(batch, top_k=5)[0]
    assert plain[[0, 1, 4], 0].tolist() == [3, 17, 3]  # unexcluded, a pool image matches itself first
    keys = [pixel_hash(image) for image in pool]
    got = match_aligned(fitted, batch, 5, pool_keys=keys)
    assert torch.equal(got, brute_force_aligned(fitted, batch, pool, 5))
    assert 3 not in got[0].tolist() and 17 not in got[1].tolist() and torch.equal(got[0], got[4])
    assert torch.equal(got[2:4], plain[2:4])  # queries not in the pool: the plain top-k
    assert torch.equal(match_aligned(fitted, batch, 5), plain)  # no pool keys: no exclusion
    # the strategy is the same function; exclude_self=False is the matcher's plain top-k
    assert torch.equal(select_references("aligned", pool, k=5, query_pixel_values=batch, matcher=fitted), got)
    unexcluded = select_references("aligned", pool, k=5, query_pixel_values=batch, matcher=fitted, exclude_self=False)
    assert torch.equal(unexcluded, plain)


def test_match_aligned_skips_every_pool_copy_of_the_query(fitted, synthetic):
    pool = synthetic[0]
    keyed_pool = pool.clone()
    keyed_pool[9] = pool[5]  # the keys below say pool image 9 is a copy of image 5
    keys = [pixel_hash(image) for image in keyed_pool]
    got = match_aligned(fitted, pool[[5, 9, 0]], 6, pool_keys=keys)
    assert torch.equal(got, brute_force_aligned(fitted, pool[[5, 9, 0]], keyed_pool, 6))
    assert not {5, 9} & set(got[0].tolist()) and 0 not in got[2].tolist()


def test_match_aligned_validates_k(fitted, synthetic):
    pool, query = synthetic[0], synthetic[2][:1]
    keys = [pixel_hash(image) for image in pool]
    for bad in (0, 41, 2.0, True):
        with pytest.raises(ValueError, match=r"top_k=.* must be an integer in \[1, 40\]"):
            match_aligned(fitted, query, bad, pool_keys=keys)
    assert sorted(match_aligned(fitted, query, 40, pool_keys=keys)[0].tolist()) == list(range(40))  # not in the pool
    assert sorted(match_aligned(fitted, pool[:1], 39, pool_keys=keys)[0].tolist()) == list(range(1, 40))
    with pytest.raises(ValueError, match="query 0 may use only 39 of the 40 pool images .* use k <= 39"):
        match_aligned(fitted, pool[:1], 40, pool_keys=keys)
    with pytest.raises(ValueError, match="use k <= 39"):
        select_references("aligned", pool, k=40, query_pixel_values=pool[:1], matcher=fitted)
    with pytest.raises(ValueError, match="pool_keys has 39 keys but the matcher was fitted on 40 images"):
        match_aligned(fitted, query, 2, pool_keys=keys[1:])
    with pytest.raises(ValueError, match="query_keys has 2 keys for 1 queries"):
        match_aligned(fitted, query, 2, pool_keys=keys, query_keys=keys[:2])
    with pytest.raises(ValueError, match=r"k=41 must lie in \[1, 40\]"):
        AlignedReferences(fitted, pool, k=41)


def test_aligned_references_cache_matches_each_image_once(fitted, synthetic, monkeypatch):
    pool, queries = synthetic[0], synthetic[2]
    batch = torch.cat([pool[[2]], queries[:2], pool[[2]]])
    expected = brute_force_aligned(fitted, batch[:3], pool, 4)[[0, 1, 2, 0]]  # the distinct images, as matched
    expected_new = brute_force_aligned(fitted, queries[[5]], pool, 4)[0]
    calls = []
    match = fitted.match
    monkeypatch.setattr(fitted, "match", lambda images, **kw: calls.append(images.shape[0]) or match(images, **kw))
    aligned = AlignedReferences(fitted, pool, k=4)
    first = aligned.indices(batch)
    assert calls == [3] and torch.equal(first, expected)  # the repeated image is matched once
    assert torch.equal(aligned.indices(batch), first) and calls == [3]  # all cached: no matching
    mixed = aligned.indices(torch.cat([queries[[1]], queries[[5]]]))
    assert calls == [3, 1]  # only the new image
    assert torch.equal(mixed[0], first[2]) and torch.equal(mixed[1], expected_new)
