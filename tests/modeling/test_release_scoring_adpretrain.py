"""The release maths against independent computations (index loops, numpy, scipy).

The fixtures (tests/release_parity/) prove equality to the released code on a few inputs;
these tests pin each function's definition on other shapes: differing grids, odd widths,
ties, and the one-line errors on bad input.
"""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from adpretrain_hf.modeling.release_scoring_adpretrain import (
    global_min_max_normalise,
    release_coreset_indices,
    release_featurenorm_maps,
    release_featurenorm_token_scores,
    release_greedy_coreset,
    release_level_mean_map,
    release_nn_squared_distances,
    release_padim_distances,
    release_padim_fit,
    release_patchcore_embed,
    release_patchcore_image_scores,
    release_patchcore_maps,
    smooth_maps,
)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def adaptive_pool_loop(values: list[float], out: int) -> list[float]:
    """torch's adaptive average pooling rule written out: bin i covers [floor(iL/out), ceil((i+1)L/out))."""
    n = len(values)
    return [float(np.mean(values[(i * n) // out : -((-(i + 1) * n) // out)])) for i in range(out)]


def test_patchcore_embed_matches_an_index_loop():
    maps = [rand(1, 3, 4, 4, seed=9), rand(1, 5, 4, 4, seed=1), rand(1, 2, 4, 4, seed=2), rand(1, 7, 4, 4, seed=3)]
    dim = 16
    out = release_patchcore_embed(maps, dim=dim)
    assert out.shape == (1, 4, 4, dim)
    for y, x in [(0, 0), (1, 2), (3, 3)]:
        per_level = []
        for fmap in maps[-3:]:  # the last three levels only
            padded = torch.nn.functional.pad(fmap[0], (1, 1, 1, 1))
            hood = [float(padded[c, y + dy, x + dx]) for c in range(fmap.shape[1]) for dy in range(3) for dx in range(3)]
            per_level += adaptive_pool_loop(hood, dim)
        expected = adaptive_pool_loop(per_level, dim)
        np.testing.assert_allclose(out[0, y, x].numpy(), expected, atol=1e-5)


def loop_neighbourhoods(fmap: torch.Tensor) -> torch.Tensor:
    """``[C, h, w]`` -> ``[C * 9, h, w]``: zero-padded 3x3 neighbourhoods by index loops, (c, row, col) order."""
    c, h, w = fmap.shape
    padded = torch.nn.functional.pad(fmap, (1, 1, 1, 1))
    return torch.stack([padded[ch, dy : dy + h, dx : dx + w] for ch in range(c) for dy in range(3) for dx in range(3)])


def test_patchcore_embed_resizes_later_levels_after_taking_neighbourhoods():
    """The release takes each level's neighbourhoods on its own grid, THEN resizes them bilinearly
    (align_corners=False) to the first used level's grid (so padding zeros reach the interior)."""
    maps = [rand(1, 4, 8, 8), rand(1, 3, 8, 8, seed=1), rand(1, 2, 4, 4, seed=2), rand(1, 2, 2, 2, seed=3)]
    dim = 8
    out = release_patchcore_embed(maps, dim=dim)
    assert out.shape == (1, 8, 8, dim)
    hoods = []
    for fmap in maps[1:]:
        planes = loop_neighbourhoods(fmap[0])
        hoods.append(torch.nn.functional.interpolate(planes[None], size=(8, 8), mode="bilinear", align_corners=False)[0])
    for y, x in [(0, 0), (3, 4), (7, 2)]:
        per_level = []
        for hood in hoods:
            per_level += adaptive_pool_loop(hood[:, y, x].tolist(), dim)
        np.testing.assert_allclose(out[0, y, x].numpy(), adaptive_pool_loop(per_level, dim), atol=1e-5)
    with pytest.raises(ValueError, match="last 3 levels"):
        release_patchcore_embed(maps[:2])


def brute_force_greedy(points, starts, count):
    dist = [float(np.mean([np.linalg.norm(p - points[s]) for s in starts])) for p in points]
    chosen = []
    for _ in range(count):
        pick = int(np.argmax(dist))
        chosen.append(pick)
        dist = [min(d, float(np.linalg.norm(p - points[pick]))) for d, p in zip(dist, points)]
    return chosen


def test_greedy_coreset_matches_a_loop_and_coreset_indices_are_seeded():
    points = rand(60, 5)
    starts = torch.tensor([3, 17, 42])
    assert release_greedy_coreset(points, starts, 12).tolist() == brute_force_greedy(points.double().numpy(), [3, 17, 42], 12)
    bank = rand(200, 32, seed=4)
    first = release_coreset_indices(bank, generator=torch.Generator().manual_seed(0), projection_dim=8)
    again = release_coreset_indices(bank, generator=torch.Generator().manual_seed(0), projection_dim=8)
    assert first.tolist() == again.tolist() and len(set(first.tolist())) == first.numel() == 20
    assert release_coreset_indices(bank, percentage=1.0).tolist() == list(range(200))
    with pytest.raises(ValueError, match="empty"):
        release_coreset_indices(bank[:5])


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_nn_search_is_exact_where_float32_cannot_rank(offset, monkeypatch):
    """Rows far from the origin (norms ~1e3 x the gaps) with near-duplicates: the float32 expansion
    cannot rank them, so the screen must hand those queries to the float64 search; the result is
    the float64 brute force's, rows and distances, with ties going to the lowest row."""
    g = torch.Generator().manual_seed(5)
    bank = torch.randn(300, 64, generator=g) * 0.01 + offset
    bank[7] = bank[250]  # an exact duplicate
    queries = torch.cat([bank[:40] + torch.randn(40, 64, generator=g) * 1e-3, torch.randn(200, 64, generator=g) * 0.01 + offset,
                         bank[250:251].clone()])  # the last query sits on rows 7 and 250: the tie goes to row 7
    fallbacks = []
    original = torch.cdist
    monkeypatch.setattr(torch, "cdist", lambda a, *args, **kw: fallbacks.append(a.shape[0]) or original(a, *args, **kw))
    dist, index = release_nn_squared_distances(queries, bank)
    full = ((queries[:, None, :].double() - bank[None].double()) ** 2).sum(-1)
    assert index.tolist() == full.argmin(dim=1).tolist()
    assert index[-1].item() == 7 and dist[-1].item() == 0.0
    torch.testing.assert_close(dist.double(), full.min(dim=1).values, rtol=1e-6, atol=0)
    assert (sum(fallbacks) > 0) == (offset > 0)  # only the cancelling case needs the whole-bank float64 search


def test_nn_squared_distances_and_patchcore_scores():
    queries, bank = rand(37, 6), rand(11, 6, seed=1)
    dist, index = release_nn_squared_distances(queries, bank)
    full = ((queries[:, None, :].double() - bank[None].double()) ** 2).sum(-1)
    torch.testing.assert_close(dist.double(), full.min(dim=1).values, atol=1e-6, rtol=0)
    assert index.tolist() == full.argmin(dim=1).tolist()
    with pytest.raises(ValueError, match="queries"):
        release_nn_squared_distances(queries, bank[:, :5])
    grid = rand(2, 4, 4).abs()
    assert release_patchcore_image_scores(grid).tolist() == grid.flatten(1).max(dim=1).values.tolist()
    up, smoothed = release_patchcore_maps(grid, (16, 16))
    torch.testing.assert_close(up[:, 7:9, 7:9].mean((1, 2)), grid[:, 1:3, 1:3].mean((1, 2)))  # centre, align_corners=False
    np.testing.assert_allclose(smoothed[1].numpy(), gaussian_filter(up[1].double().numpy(), 4.0, mode="reflect"), atol=1e-6)


def test_padim_fit_and_distances_match_numpy():
    train, test = rand(9, 3, 2, 2), rand(2, 3, 2, 2, seed=1)
    mean, cov, inv = release_padim_fit(train)
    for p, (y, x) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        rows = train[:, :, y, x].double().numpy()
        expected = np.cov(rows, rowvar=False) + 0.01 * np.eye(3)
        np.testing.assert_allclose(cov[:, :, p].numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(mean[:, p].numpy(), rows.mean(0), atol=1e-6)
        delta = test[:, :, y, x].double().numpy() - rows.mean(0)
        maha = np.sqrt(np.einsum("bi,ij,bj->b", delta, np.linalg.inv(expected), delta))
        np.testing.assert_allclose(release_padim_distances(test, mean, inv)[:, y, x].numpy(), maha, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        release_padim_fit(train[:1])
    with pytest.raises(ValueError, match="same shape"):
        release_padim_distances(rand(2, 3, 3, 3), mean, inv)


def test_level_mean_map_featurenorm_and_normalisation():
    grids = [rand(2, 4, 4).abs(), rand(2, 2, 2, seed=1).abs()]
    out = release_level_mean_map(grids, (8, 8))
    corners = (grids[0][:, 0, 0] + grids[1][:, 0, 0]) / 2  # align_corners=True keeps the corner values
    torch.testing.assert_close(out[:, 0, 0], corners)
    features = [rand(2, 5, 4, 4), rand(2, 5, 2, 2, seed=1)]
    torch.testing.assert_close(release_featurenorm_token_scores(features[0]),
                               torch.sqrt(features[0].norm(dim=1) + 1) - 1)
    unsmoothed, smoothed, scores = release_featurenorm_maps(features, (8, 8))
    torch.testing.assert_close(smoothed, smooth_maps(unsmoothed))
    torch.testing.assert_close(scores, smoothed.flatten(1).max(dim=1).values)
    maps = torch.tensor([[[1.0, 2.0]], [[3.0, 5.0]]])
    normalised, image_scores = global_min_max_normalise(maps)
    torch.testing.assert_close(normalised, torch.tensor([[[0.0, 0.25]], [[0.5, 1.0]]]))
    torch.testing.assert_close(image_scores, torch.tensor([0.25, 1.0]))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        global_min_max_normalise(maps[0])
    with pytest.raises(ValueError, match="pass"):
        release_level_mean_map([], (8, 8))
