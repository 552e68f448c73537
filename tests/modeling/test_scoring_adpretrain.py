"""PatchCore/PaDiM scoring pieces against their definitions written as plain numpy loops."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adpretrain_hf.modeling.scoring_adpretrain import (
    aggregate_patch_features,
    embedding_width,
    mahalanobis_distances,
    padim_groups,
    patchcore_image_scores,
    reweighted_scores,
)


def _adaptive_pool(values: np.ndarray, out: int) -> np.ndarray:
    """adaptive_avg_pool1d over the last axis: bin i averages [floor(i*C/out), ceil((i+1)*C/out))."""
    c = values.shape[-1]
    return np.stack([values[..., (i * c) // out : math.ceil((i + 1) * c / out)].mean(-1) for i in range(out)], -1)


def _local_average(fmap: np.ndarray) -> np.ndarray:
    """3x3 mean with zero padding counted, [C, h, w]."""
    c, h, w = fmap.shape
    padded = np.zeros((c, h + 2, w + 2))
    padded[:, 1:-1, 1:-1] = fmap
    return sum(padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0


@pytest.mark.parametrize("dim", [4, 100])  # pooled, and plain concatenation
def test_aggregate_patch_features_against_loops(dim):
    torch.manual_seed(0)
    maps = [torch.randn(2, 6, 4, 4), torch.randn(2, 10, 2, 2)]
    out = aggregate_patch_features(maps, dim=dim)
    width = min(dim, min(dim, 6) + min(dim, 10))
    assert out.shape == (2, 4, 4, width) == (2, 4, 4, embedding_width([6, 10], dim))
    for b in range(2):
        layers = []
        for fmap in maps:
            local = torch.from_numpy(_local_average(fmap[b].double().numpy()))[None]
            grid = local if local.shape[-1] == 4 else F.interpolate(local, size=(4, 4), mode="bilinear", align_corners=False)
            layers.append(_adaptive_pool(grid[0].numpy().transpose(1, 2, 0), min(dim, fmap.shape[1])))
        expected = _adaptive_pool(np.concatenate(layers, -1), width)
        np.testing.assert_allclose(out[b].numpy(), expected, atol=1e-5)


def test_reweighted_scores_are_equation_7():
    rng = np.random.default_rng(2)
    bank, queries = rng.normal(size=(12, 3)), rng.normal(size=(4, 3))
    nn = np.array([int(np.argmin([np.linalg.norm(q - m) for m in bank])) for q in queries])
    got = reweighted_scores(torch.from_numpy(queries), torch.from_numpy(nn), torch.from_numpy(bank), num_neighbors=3)
    for i, q in enumerate(queries):
        centre = bank[nn[i]]
        support = sorted(range(len(bank)), key=lambda j: np.linalg.norm(bank[j] - centre))[:3]  # m* included
        s_star = np.linalg.norm(q - centre)
        weight = 1 - np.exp(s_star) / sum(np.exp(np.linalg.norm(q - bank[j])) for j in support)
        assert float(got[i]) == pytest.approx(weight * s_star, rel=1e-6)


def test_mahalanobis_against_the_inverse_covariance():
    rng = np.random.default_rng(3)
    b, d, p = 3, 4, 5
    embedding, mean = rng.normal(size=(b, d, p)), rng.normal(size=(p, d))
    factors = rng.normal(size=(p, d, d))
    covariance = factors @ factors.transpose(0, 2, 1) + np.eye(d)
    cholesky = torch.linalg.cholesky(torch.from_numpy(covariance))
    got = mahalanobis_distances(torch.from_numpy(embedding), torch.from_numpy(mean), cholesky)
    for i in range(b):
        for j in range(p):
            delta = embedding[i, :, j] - mean[j]
            assert float(got[i, j]) == pytest.approx(np.sqrt(delta @ np.linalg.inv(covariance[j]) @ delta), rel=1e-9)


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="num_neighbors must be >= 1, got 0"):
        reweighted_scores(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), torch.zeros(4, 3), num_neighbors=0)


def test_patchcore_image_scores_max_and_reweighted_at_the_worst_patch():
    torch.manual_seed(4)
    bank, embedding = torch.randn(12, 3), torch.randn(2, 5, 3)  # [M, D], [B, P, D]
    distances = torch.cdist(embedding, bank.expand(2, -1, -1))  # [B, P, M]
    dist, idx = distances.min(dim=2)  # [B, P]
    assert torch.equal(patchcore_image_scores("max", dist), dist.amax(dim=1))
    got = patchcore_image_scores("reweighted", dist, idx, embedding, bank, num_neighbors=3)
    worst = dist.argmax(dim=1)
    rows = torch.arange(2)
    expected = reweighted_scores(embedding[rows, worst], idx[rows, worst], bank, num_neighbors=3)
    assert torch.allclose(got, expected)


def test_padim_groups_per_layer_or_concatenated_on_the_largest_grid():
    fine, coarse = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)
    assert [g.shape for g in padim_groups([fine, coarse], "per_layer")] == [fine.shape, coarse.shape]
    (group,) = padim_groups([fine, coarse], "concatenated")
    assert group.shape == (2, 8, 4, 4)
    assert torch.equal(group[:, :3], fine)
    assert torch.equal(group[:, 3:, ::2, ::2], coarse)  # nearest: each coarse cell fills a 2x2 block
    assert torch.equal(group[:, 3:, 1::2, 1::2], coarse)
