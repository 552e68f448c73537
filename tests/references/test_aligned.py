"""The semantic-aligned matcher (references/aligned.py): its codebook against sklearn's KMeans on
hand-sliced cells, self-matches, alignment on a synthetic pool, save/load, and its errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from adpretrain_hf.references import SemanticAlignedMatcher, codeword_histograms


# -- the matcher --------------------------------------------------------------------------
def test_codebook_is_kmeans_of_each_cells_features(fitted, synthetic):
    pool = synthetic[0]
    features = fitted.extract_features(pool)  # [40, 64, 16, 16]
    assert features.shape == (40, 64, 16, 16) and fitted.codebook.shape == (25, 5, 64)
    bounds = [round(i * 16 / 5) for i in range(6)]  # 0, 3, 6, 10, 13, 16
    for u, v in ((0, 0), (2, 3), (4, 4)):
        cell = features[:, :, bounds[u] : bounds[u + 1], bounds[v] : bounds[v + 1]]
        points = cell.permute(0, 2, 3, 1).reshape(-1, 64).numpy()
        with threadpool_limits(limits=1):  # as the matcher runs it; only speed depends on threads
            centers = KMeans(n_clusters=5, n_init="auto", random_state=0).fit(points).cluster_centers_
        np.testing.assert_allclose(fitted.codebook[u * 5 + v].numpy(), centers, rtol=1e-4, atol=1e-5)
    # stored histograms: one per pool image and location over all 125 centres
    assert fitted.pool_histograms.shape == (40, 256, 125)
    expected = codeword_histograms(features.flatten(2).transpose(1, 2)[:2], fitted.codebook.flatten(0, 1))
    torch.testing.assert_close(fitted.pool_histograms[:2], expected)


def test_query_equal_to_pool_image_matches_itself_first(fitted, synthetic):
    pool = synthetic[0]
    chosen = torch.tensor([0, 7, 23, 39])
    indices, distances = fitted.match(pool[chosen])
    assert indices.shape == (4, 8) and distances.shape == (4, 40)
    assert torch.equal(indices[:, 0], chosen)
    self_distance = distances[torch.arange(4), chosen]
    assert self_distance.abs().max() < 1e-6
    others = distances.clone()
    others[torch.arange(4), chosen] = math.inf
    assert others.min() > 100 * self_distance.abs().max() + 1e-7
    assert torch.equal(indices, torch.argsort(distances, dim=1, stable=True)[:, :8])


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_matcher_prefers_same_position_and_orientation(synthetic, fitted, resnet, backend):
    """8 configurations x 5 pool draws; 16 queries (2 new draws per configuration).

    Chance of a top-1 pool image of the query's configuration: 5/40 = 12.5 %. A random-init
    ResNet-18 already encodes where bright edges lie and which way they run, so the matcher
    must do far better; we require >= 75 % top-1 and >= 60 % precision over the top 5.
    """
    if backend == "faiss":
        pytest.importorskip("faiss")
    pool, pool_labels, queries, query_labels = synthetic
    if backend == "sklearn":
        matcher = fitted  # the shared fixture: random-init ResNet-18, sklearn KMeans
    else:
        matcher = SemanticAlignedMatcher(resnet, device="cpu", kmeans_backend=backend).fit(pool)
    indices, _ = matcher.match(queries, top_k=5)
    top1 = (pool_labels[indices[:, 0]] == query_labels).float().mean().item()
    precision5 = (pool_labels[indices] == query_labels[:, None]).float().mean().item()
    assert top1 >= 0.75, top1
    assert precision5 >= 0.6, precision5


def test_save_load_round_trip(fitted, synthetic, tmp_path):
    queries = synthetic[2][:5]
    path = tmp_path / "matcher.safetensors"
    fitted.save(path)
    loaded = SemanticAlignedMatcher.load(path, device="cpu")  # default ResNet-18 stem, saved weights
    assert loaded.random_init is False and loaded.num_pool == 40
    expected_indices, expected_distances = fitted.match(queries)
    indices, distances = loaded.match(queries)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(distances, expected_distances)
    with pytest.raises(ValueError, match="custom feature_net"):
        SemanticAlignedMatcher.load(path, feature_net=torch.nn.Conv2d(3, 8, 3), device="cpu")


def test_matcher_errors(fitted, synthetic, resnet):
    pool = synthetic[0]
    unfitted = SemanticAlignedMatcher(resnet, device="cpu", kmeans_backend="sklearn")
    with pytest.raises(RuntimeError, match="not fitted: call fit"):
        unfitted.match(pool[:1])
    with pytest.raises(ValueError, match="pool's image size"):
        fitted.match(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="top_k"):
        fitted.match(pool[:1], top_k=41)
    with pytest.raises(ValueError, match="exclude has 1 entries but there are 2 queries"):
        fitted.match(pool[:2], exclude=[[0]])
    with pytest.raises(ValueError, match=r"exclude\[0\]=\[40\] holds a pool index outside \[0, 39\]"):
        fitted.match(pool[:1], exclude=[[40]])
    with pytest.raises(ValueError, match="unknown kmeans_backend"):
        SemanticAlignedMatcher(resnet, kmeans_backend="scipy")
