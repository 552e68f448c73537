"""Nearest-neighbour matching (torch and faiss backends) against an explicit per-query loop."""

import pytest
import torch

from adpretrain_hf.modeling.matching_adpretrain import batched_nearest_indices, faiss_available, nearest_neighbors

from .helpers import brute_force_nearest as _brute_force_nearest


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_nearest_neighbors_match_brute_force(metric, backend):
    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss is not installed")
    torch.manual_seed(0)
    queries, bank = torch.randn(60, 16, dtype=torch.float64), torch.randn(45, 16, dtype=torch.float64)
    values, idx = nearest_neighbors(queries, bank, metric=metric, backend=backend, max_block_elements=97)
    assert torch.equal(idx, _brute_force_nearest(queries, bank, metric))
    if metric == "l2":
        assert torch.allclose(values.double(), (queries - bank[idx]).square().sum(1), rtol=1e-4)


def test_torch_search_is_chunk_invariant():
    torch.manual_seed(1)
    queries, bank = torch.randn(300, 8), torch.randn(200, 8)
    _, a = nearest_neighbors(queries, bank, backend="torch", max_block_elements=1)
    _, b = nearest_neighbors(queries, bank, backend="torch", max_block_elements=10**9)
    assert torch.equal(a, b)


def test_faiss_does_not_modify_inputs():
    if not faiss_available():
        pytest.skip("faiss is not installed")
    queries, bank = torch.randn(20, 8) * 5, torch.randn(10, 8) * 5
    q0, b0 = queries.clone(), bank.clone()
    nearest_neighbors(queries, bank, backend="faiss")
    assert torch.equal(queries, q0) and torch.equal(bank, b0)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_per_sample_banks_match_a_loop(metric):
    torch.manual_seed(2)
    queries, banks = torch.randn(3, 20, 8), torch.randn(3, 30, 8)
    idx = batched_nearest_indices(queries, banks, metric=metric, max_block_elements=50)
    for b in range(3):
        assert torch.equal(idx[b], _brute_force_nearest(queries[b], banks[b], metric))


def test_empty_bank_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        nearest_neighbors(torch.randn(3, 4), torch.randn(0, 4))
