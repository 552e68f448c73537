"""The greedy coreset (k-center on a random projection) against a textbook numpy greedy loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adpretrain_hf.detectors.coreset import greedy_coreset_indices, greedy_k_center, random_projection_matrix


def naive_greedy(x: np.ndarray, k: int, start: int) -> list[int]:
    """Textbook greedy k-center: repeatedly add the point farthest from the chosen set."""
    chosen = [start]
    while len(chosen) < k:
        d = ((x[:, None, :] - x[None, chosen, :]) ** 2).sum(axis=2).min(axis=1)  # [N] distance to the chosen set
        d[chosen] = -np.inf
        chosen.append(int(np.argmax(d)))
    return chosen


def test_greedy_k_center_matches_naive():
    x = np.random.default_rng(0).normal(size=(120, 6))
    for start in (0, 77):
        got = greedy_k_center(torch.from_numpy(x), 15, start)
        assert got.tolist() == naive_greedy(x, 15, start)


def test_greedy_k_center_with_duplicates_never_repeats():
    # integer coordinates: the norm expansion is exact, so ties break like numpy's (first index)
    distinct = np.random.default_rng(2).integers(-5, 6, size=(5, 3)).astype(np.float64)
    x = np.repeat(distinct, 4, axis=0)  # 20 rows, 5 distinct
    got = greedy_k_center(torch.from_numpy(x), 8, 0).tolist()
    assert got == naive_greedy(x, 8, 0) and len(set(got)) == 8
    assert len({tuple(x[i]) for i in got[:5]}) == 5  # all distinct points before any duplicate


def test_coreset_projection_and_selection():
    feats = np.random.default_rng(1).normal(size=(300, 40))
    got = greedy_coreset_indices(torch.from_numpy(feats), ratio=0.1, projection_dim=8, seed=3, start_index=5)
    proj = feats @ random_projection_matrix(40, 8, seed=3, dtype=torch.float64).numpy()
    assert got.tolist() == naive_greedy(proj, 30, 5)
    again = greedy_coreset_indices(torch.from_numpy(feats), ratio=0.1, projection_dim=8, seed=3)
    assert again.tolist() == greedy_coreset_indices(torch.from_numpy(feats), ratio=0.1, projection_dim=8, seed=3).tolist()
    assert len(set(again.tolist())) == 30
    assert greedy_coreset_indices(torch.from_numpy(feats), ratio=1.0).tolist() == list(range(300))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_coreset_on_gpu_matches_cpu():
    feats = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cpu = greedy_coreset_indices(feats, 0.1, 16, seed=2)
    gpu = greedy_coreset_indices(feats.cuda(), 0.1, 16, seed=2)
    assert gpu.device.type == "cuda" and gpu.cpu().tolist() == cpu.tolist()
