"""Nearest-neighbour matching (torch, faiss and traceable backends) against an explicit per-query loop."""

import numpy as np
import pytest
import torch

from adpretrain_hf.modeling import matching_adpretrain
from adpretrain_hf.modeling.matching_adpretrain import BACKENDS, batched_nearest_indices, faiss_available, nearest_neighbors
from adpretrain_hf.modeling.residual_adpretrain import residual_features

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


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_traceable_backend_against_brute_force(metric, monkeypatch):
    monkeypatch.setattr(matching_adpretrain, "BANK_CHUNK_ROWS", 4)  # several chunks over 23 rows
    rng = np.random.default_rng(1)
    queries, bank = rng.normal(size=(9, 5)), rng.normal(size=(23, 5))
    values, index = nearest_neighbors(torch.from_numpy(queries), torch.from_numpy(bank), metric=metric, backend="traceable")
    if metric == "l2":
        values = values.sqrt()  # the backends return squared L2
    for i, q in enumerate(queries):
        if metric == "l2":
            scores = [np.linalg.norm(q - m) for m in bank]
            best = int(np.argmin(scores))
        else:
            scores = [q @ m / (np.linalg.norm(q) * np.linalg.norm(m)) for m in bank]
            best = int(np.argmax(scores))
        assert int(index[i]) == best and float(values[i]) == pytest.approx(scores[best], abs=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_traceable_ties_across_chunks_keep_the_lower_index_as_argmin(metric, monkeypatch):
    monkeypatch.setattr(matching_adpretrain, "BANK_CHUNK_ROWS", 1)
    bank = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    query = torch.tensor([[2.0, 0.0]]) if metric == "cosine" else bank[1:2]
    _, index = nearest_neighbors(query, bank, metric, backend="traceable")
    assert int(index[0]) == 1


def test_traceable_is_a_backend_with_the_same_input_checks():
    assert "traceable" in BACKENDS
    with pytest.raises(ValueError, match=r"unknown metric 'dot': choose one of \('cosine', 'l2'\)"):
        nearest_neighbors(torch.zeros(2, 3), torch.zeros(4, 3), metric="dot", backend="traceable")
    with pytest.raises(ValueError, match="the reference bank is empty: give at least one reference feature"):
        nearest_neighbors(torch.zeros(2, 3), torch.zeros(0, 3), backend="traceable")
    with pytest.raises(ValueError, match="feature widths differ: queries have 5, the bank 3"):
        nearest_neighbors(torch.zeros(2, 5), torch.zeros(4, 3), backend="traceable")


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_residuals_are_the_same_with_the_traceable_backend(metric):
    torch.manual_seed(3)
    tokens, bank = torch.randn(2, 7, 6), torch.randn(40, 6)
    expected = residual_features(tokens, bank, metric, backend="torch")
    assert torch.allclose(residual_features(tokens, bank, metric, backend="traceable"), expected)
