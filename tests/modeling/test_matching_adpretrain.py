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


@pytest.mark.parametrize("backend", ["traced", "traced-topk"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_traced_graphs_keep_the_lower_index_on_ties_within_and_across_chunks(backend, metric, monkeypatch):
    monkeypatch.setattr(matching_adpretrain, "BANK_CHUNK_ROWS", 2)
    # chunks of 2 rows: rows 2 and 3 tie inside chunk 1, and row 5 repeats them in chunk 2
    bank = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])
    queries = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]]) if metric == "cosine" else bank[[2, 1, 0]]
    _, index = _search(backend, queries, bank, metric)
    assert index.tolist() == [2, 1, 0]


def test_an_unknown_traced_index_style_is_refused():
    with pytest.raises(ValueError, match=r"unknown traced index style 'argmax': choose one of \('winning-chunk', 'topk'\)"):
        with matching_adpretrain.traced_index_style("argmax"):
            pass


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


# -- the prepared, blocked search: exactness against float64 brute force in every backend ------------

SEARCH_BACKENDS = ["torch", "auto", "traceable", "traced", "traced-topk", "faiss"]


def _float64_truth(queries, bank, metric):
    """Brute force in float64: (best value, best index, margin to the runner-up) per query."""
    q, b = queries.double(), bank.double()
    if metric == "cosine":
        scores = -(torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(b, dim=1).T)
    else:
        scores = (q[:, None, :] - b[None, :, :]).square().sum(-1)
    top = scores.topk(min(2, b.shape[0]), dim=1, largest=False)
    margin = top.values[:, 1] - top.values[:, 0] if b.shape[0] > 1 else torch.full((q.shape[0],), float("inf"))
    best = -top.values[:, 0] if metric == "cosine" else top.values[:, 0]
    return best, top.indices[:, 0], margin


def _search(backend, queries, bank, metric):
    """One backend's answer; ``"traced"`` / ``"traced-topk"`` run the graph ``torch.jit.trace`` records
    (the ONNX path; its index found by the winning chunk's ArgMin / by TopK)."""
    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss is not installed")
    if not backend.startswith("traced"):
        return nearest_neighbors(queries, bank, metric=metric, backend=backend)
    with matching_adpretrain.traced_index_style("topk" if backend == "traced-topk" else "winning-chunk"):
        traced = torch.jit.trace(lambda q: nearest_neighbors(q, bank, metric=metric, backend="traceable"), queries[:3], check_trace=False)
    return traced(queries)  # more queries than traced with: the query count stays dynamic


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 8 bank rows x 4 queries, so small tensors cross many blocks both ways."""
    monkeypatch.setattr(matching_adpretrain, "BANK_CHUNK_ROWS", 8)
    monkeypatch.setattr(matching_adpretrain, "SEARCH_BLOCK_ELEMENTS", 32)


@pytest.mark.parametrize("backend", SEARCH_BACKENDS)
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("bank_rows", [5, 8, 61])  # smaller than, equal to and larger than a block
def test_search_matches_float64_brute_force(backend, metric, bank_rows, small_blocks):
    generator = torch.Generator().manual_seed(bank_rows)
    queries, bank = torch.randn(37, 12, generator=generator) * 3, torch.randn(bank_rows, 12, generator=generator) * 3
    values, index = _search(backend, queries, bank, metric)
    best, truth, margin = _float64_truth(queries, bank, metric)
    clear = margin > 1e-4  # float32 cannot order closer runners-up
    assert clear.float().mean() > 0.9
    assert torch.equal(index[clear], truth[clear])
    assert torch.allclose(values.double(), best, rtol=1e-5, atol=1e-4)
    assert values.shape == index.shape == (37,) and index.dtype == torch.long


@pytest.mark.parametrize("backend", ["torch", "traceable", "traced"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_ties_keep_the_lowest_index_across_blocks(backend, metric, small_blocks):
    generator = torch.Generator().manual_seed(5)
    distinct = torch.randn(30, 6, generator=generator) * 4
    bank = torch.cat([distinct, distinct, distinct])  # every row three times: at i, i + 30, i + 60 (other blocks)
    queries = distinct[torch.randperm(30, generator=generator)] + 0.01 * torch.randn(30, 6, generator=generator)
    _, index = _search(backend, queries, bank, metric)
    _, truth, _ = _float64_truth(queries, distinct, metric)
    assert torch.equal(index, truth)  # the first copy, never a later one


def test_prepared_bank_is_kept_while_the_bank_lives_unchanged():
    bank = torch.randn(40, 6)
    first = matching_adpretrain.prepare_bank(bank, "l2")
    assert matching_adpretrain.prepare_bank(bank, "l2") is first
    assert matching_adpretrain.prepare_bank(bank, "cosine") is not first
    queries = torch.randn(9, 6)
    bank.mul_(-1.0)  # changed in place: a stale preparation would answer for the old rows
    assert matching_adpretrain.prepare_bank(bank, "l2") is not first
    _, index = nearest_neighbors(queries, bank, metric="l2", backend="torch")
    assert torch.equal(index, _brute_force_nearest(queries, bank, "l2"))
    key_count = len(matching_adpretrain._PREPARED)
    del bank, first
    assert len(matching_adpretrain._PREPARED) < key_count  # freed with its bank


def test_a_prepared_bank_searches_like_its_tensor():
    generator = torch.Generator().manual_seed(6)
    queries, bank = torch.randn(25, 7, generator=generator), torch.randn(50, 7, generator=generator)
    prepared = matching_adpretrain.PreparedBank(bank, "cosine")
    values, index = nearest_neighbors(queries, prepared, metric="cosine", backend="traceable")
    expected_values, expected_index = prepared.search(queries)
    assert torch.equal(index, expected_index) and torch.equal(values, expected_values)
    assert torch.equal(index, _brute_force_nearest(queries, bank, "cosine"))
    assert torch.allclose(residual_features(queries[None], prepared), residual_features(queries[None], bank, backend="torch"))
    with pytest.raises(ValueError, match="prepared for metric 'cosine', not 'l2'"):
        nearest_neighbors(queries, prepared, metric="l2")
    with pytest.raises(ValueError, match="feature widths differ: queries have 3, the bank 7"):
        nearest_neighbors(torch.zeros(2, 3), prepared)


def test_nan_queries_stay_nan():
    bank = torch.randn(20, 4)
    queries = torch.randn(3, 4)
    queries[1, 2] = float("nan")
    values, _ = nearest_neighbors(queries, bank, metric="l2", backend="torch")
    assert torch.isnan(values[1]) and not torch.isnan(values[[0, 2]]).any()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("style", matching_adpretrain.TRACED_INDEX_STYLES)
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_the_exported_search_is_exact_and_keeps_the_lowest_tie(metric, runtime, style, small_blocks, tmp_path):
    generator = torch.Generator().manual_seed(7)
    distinct = torch.randn(20, 6, generator=generator) * 3
    bank = torch.cat([distinct, distinct])  # row i again at i + 20 (another chunk)

    class Search(torch.nn.Module):
        def forward(self, q):
            return nearest_neighbors(q, bank, metric=metric, backend="traceable")

    path = tmp_path / "search.onnx"
    with matching_adpretrain.traced_index_style(style):
        torch.onnx.export(Search(), (torch.randn(3, 6),), str(path), input_names=["q"], output_names=["v", "i"],
                          dynamic_axes={"q": {0: "n"}}, opset_version=18, dynamo=False)
    queries = distinct + 0.01 * torch.randn(20, 6, generator=generator)
    if runtime == "onnxruntime":
        ort = pytest.importorskip("onnxruntime")
        values, index = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"q": queries.numpy()})
    else:
        ov = pytest.importorskip("openvino")
        compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled({"q": queries.numpy()})
        values, index = result["v"], result["i"]
    best, truth, _ = _float64_truth(queries, distinct, metric)
    assert np.array_equal(index, truth.numpy())  # the first copy of every row
    assert np.allclose(values, best.numpy(), rtol=1e-5, atol=1e-4)
