"""Reference selection (appendix C): grid, histograms, block KL, matcher, KMeans-diverse picks.

Every number is checked against an independent computation (explicit loops, scipy's
``rel_entr``, sklearn run directly on hand-sliced features); the matcher's behaviour is
checked on a synthetic pool built so that alignment is the only thing that separates images.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import rel_entr
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits
from torchvision.models import resnet18

from adpretrain_hf.references import (
    REFERENCE_STRATEGIES,
    SemanticAlignedMatcher,
    block_kl_alignment,
    codeword_histograms,
    grid_cell_index,
    kmeans_diverse_references,
    match_aligned,
    select_references,
)
from adpretrain_hf.evaluation.reference_sets import AlignedReferences
from adpretrain_hf.modeling.content_keys_adpretrain import pixel_hash

IMAGE_SIDE = 64  # ResNet-18 stem + layer1 -> 16 x 16 maps; the 5 x 5 grid splits 16 unevenly
POSITIONS = ((16, 16), (16, 48), (48, 16), (48, 48))  # bar centres (row, col)
ORIENTATIONS = ("horizontal", "vertical")
CONFIGS = [(p, o) for p in range(len(POSITIONS)) for o in range(len(ORIENTATIONS))]  # 8 configurations


def synthetic_images(draws_per_config: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright 21 x 7 bar (one of 4 positions x 2 orientations) on a fresh textured background.

    Each draw has a new background texture (smoothed + white noise) and a +-2 px jitter of the
    bar, so two images of one configuration share only the bar's position and orientation.
    Returns images ``[8 * draws, 3, 64, 64]`` and configuration labels ``[8 * draws]``.
    """
    rows, cols = torch.meshgrid(torch.arange(IMAGE_SIDE).float(), torch.arange(IMAGE_SIDE).float(), indexing="ij")
    images, labels = [], []
    for label, (position, orientation) in enumerate(CONFIGS):
        for _ in range(draws_per_config):
            noise = torch.randn(1, 1, IMAGE_SIDE, IMAGE_SIDE, generator=generator)
            background = 2 * torch.nn.functional.avg_pool2d(noise, 5, 1, 2)[0, 0]
            background = background + 0.3 * torch.randn(IMAGE_SIDE, IMAGE_SIDE, generator=generator)
            jitter = torch.randint(-2, 3, (2,), generator=generator)
            row, col = POSITIONS[position][0] + jitter[0], POSITIONS[position][1] + jitter[1]
            half_h, half_w = (3, 10) if ORIENTATIONS[orientation] == "horizontal" else (10, 3)
            bar = ((rows - row).abs() <= half_h) & ((cols - col).abs() <= half_w)
            images.append((background + 4.0 * bar).expand(3, -1, -1))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


@pytest.fixture(scope="module")
def synthetic():
    generator = torch.Generator().manual_seed(0)
    pool, pool_labels = synthetic_images(5, generator)  # 40 pool images, 5 per configuration
    queries, query_labels = synthetic_images(2, generator)  # 16 queries: new draws of each configuration
    return pool, pool_labels, queries, query_labels


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    """A random-init ResNet-18 (no weights offline); matchers share its stem, nobody changes it."""
    torch.manual_seed(0)
    return resnet18(weights=None)


@pytest.fixture(scope="module")
def fitted(synthetic, resnet):
    pool = synthetic[0]
    return SemanticAlignedMatcher(resnet, device="cpu", kmeans_backend="sklearn").fit(pool)


# -- grid, histograms, KL ---------------------------------------------------------------
def test_grid_cells_split_uneven_maps_into_near_equal_rectangles():
    grid = grid_cell_index(16, 56, 5).reshape(16, 56)
    assert sorted(grid.unique().tolist()) == list(range(25))
    for axis, side in ((0, 16), (1, 56)):
        band = (grid // 5)[:, 0] if axis == 0 else (grid % 5)[0, :]  # row-band / column-band id
        assert torch.all(band[1:] >= band[:-1])  # contiguous runs
        sizes = torch.bincount(band, minlength=5)
        assert sizes.sum() == side and sizes.max() - sizes.min() <= 1
    assert torch.equal(grid, (grid // 5)[:, :1] * 5 + (grid % 5)[:1, :])  # cells are rectangles
    assert torch.equal(torch.bincount(grid_cell_index(10, 10, 5)), torch.full((25,), 4))  # divisible: exact
    with pytest.raises(ValueError, match="smaller grid_size"):
        grid_cell_index(4, 16, 5)


def test_codeword_histograms_match_explicit_cosine_formula():
    generator = torch.Generator().manual_seed(1)
    tokens, codebook = torch.randn(2, 5, 4, generator=generator), torch.randn(6, 4, generator=generator)
    got = codeword_histograms(tokens, codebook, chunk_size=1).double().numpy()
    for n in range(2):
        for loc in range(5):
            f = tokens[n, loc].double().numpy()
            bins = np.array([(1 + f @ c / (np.linalg.norm(f) * np.linalg.norm(c))) / 2 for c in codebook.double().numpy()])
            np.testing.assert_allclose(got[n, loc], bins / bins.sum(), rtol=1e-5, atol=1e-7)


def explicit_block_kl(query: np.ndarray, pool: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Eq. 9 with loops: mean over cells of max over the cell's locations of KL(pool || query)."""
    out = np.zeros((query.shape[0], pool.shape[0]))
    for q in range(query.shape[0]):
        for i in range(pool.shape[0]):
            per_cell = [max(rel_entr(pool[i, l], query[q, l]).sum() for l in np.flatnonzero(cells == c)) for c in np.unique(cells)]
            out[q, i] = np.mean(per_cell)
    return out


@pytest.mark.parametrize("spread", [1.0, 1e-2])  # peaked histograms, and near-uniform ones (KL ~ 1e-4: float32 cancellation)
def test_block_kl_matches_explicit_loop(spread):
    generator = torch.Generator().manual_seed(2)
    cells = grid_cell_index(5, 3, 2)  # 5 x 3 map, 2 x 2 grid: cells of 6, 3, 4 and 2 locations

    def histograms(n):
        logits = spread * torch.randn(n, 15, 7, generator=generator, dtype=torch.float64)
        return torch.softmax(logits, dim=-1)

    query, pool = histograms(2), histograms(5)
    expected = explicit_block_kl(query.numpy(), pool.numpy(), cells.numpy())
    got = block_kl_alignment(query.float(), pool.float(), cells, 4, chunk_size=2)
    assert got.shape == (2, 5)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=2e-3, atol=1e-9)
    assert expected.min() > 0  # the example is not degenerate


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


def test_feature_net_sources(tmp_path, resnet):
    with pytest.warns(UserWarning, match="randomly initialised"):
        unweighted = SemanticAlignedMatcher(device="cpu", kmeans_backend="sklearn")
    assert unweighted.random_init
    path = tmp_path / "resnet18.pt"
    torch.save(resnet.state_dict(), path)
    from_path = SemanticAlignedMatcher(str(path), device="cpu", kmeans_backend="sklearn")
    assert not from_path.random_init
    assert not torch.equal(unweighted.feature_net.layer1[1].conv2.weight, resnet.layer1[1].conv2.weight)
    torch.testing.assert_close(from_path.feature_net.layer1[1].conv2.weight, resnet.layer1[1].conv2.weight)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a ResNet-18 state dict"):
        SemanticAlignedMatcher(str(tmp_path / "bad.pt"), device="cpu")
    with pytest.raises(TypeError, match="feature_net must be"):
        SemanticAlignedMatcher(42, device="cpu")  # type: ignore[arg-type]


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


# -- KMeans-diverse references and the strategy registry -------------------------------------
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """4 well-separated gaussian blobs of 10 points each in 3-D; returns points and blob ids."""
    generator = torch.Generator().manual_seed(4)
    centres = torch.tensor([[0.0, 0, 0], [20, 0, 0], [0, 20, 0], [0, 0, 20]])
    points = torch.cat([c + torch.randn(10, 3, generator=generator) for c in centres])
    return points, torch.arange(4).repeat_interleave(10)


def test_kmeans_references_spread_over_clusters_nearest_first():
    points, blob = blobs()
    picks = kmeans_diverse_references(points, k=8, num_clusters=4)
    assert len(set(picks)) == 8
    assert sorted(blob[picks[:4]].tolist()) == [0, 1, 2, 3]  # first round: one per cluster
    assert sorted(blob[picks[4:]].tolist()) == [0, 1, 2, 3]  # second round: one more each
    for b in range(4):  # within a blob: nearest to its mean (the converged centre), then the next
        members = torch.nonzero(blob == b).flatten()
        order = members[torch.argsort((points[members] - points[members].mean(0)).norm(dim=1))]
        assert [p for p in picks if blob[p] == b] == order[:2].tolist()
    assert sorted(blob[kmeans_diverse_references(points, k=4)].tolist()) == [0, 1, 2, 3]  # num_clusters = k
    with pytest.raises(ValueError, match="k=41"):
        kmeans_diverse_references(points, k=41)


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
