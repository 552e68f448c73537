"""Exhaustive nearest-neighbour search: faiss when installed, chunked torch otherwise.

Residual features need, for every patch token, its nearest neighbour in a small bank of
normal reference tokens (cosine matching, as the release does); PatchCore needs the L2
nearest neighbour in its memory bank. Both are exact searches over banks of 10^3-10^6
rows, so one function serves both.

Backends:
- ``"torch"``: chunked matmul; the similarity block never exceeds ``max_block_elements``
  floats (default 2^26 = 256 MiB in fp32), whatever the number of queries or bank rows.
  Runs on the queries' device, so it is the GPU path when tensors live on a GPU.
- ``"faiss"``: ``IndexFlatIP`` / ``IndexFlatL2`` (GPU index when faiss-gpu sees a GPU).
- ``"auto"``: faiss for CPU tensors when faiss imports, torch otherwise (tensors already
  on a GPU stay there: copying them to a faiss CPU index would be the slow path).
- ``"traceable"``: plain torch over fixed chunks of ``BANK_CHUNK_ROWS`` bank rows; the loop
  runs over the bank, whose size is static, so the graph traces to ONNX with a dynamic
  number of queries (the detector folder's forward uses it).

This file is part of the remote-code bundle: faiss is optional and imported in ``try:``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional: faiss-cpu or faiss-gpu (extras [cpu] / [gpu])
    import faiss  # type: ignore

    _HAS_FAISS = True
except ImportError:  # pragma: no cover - exercised where faiss is absent
    faiss = None
    _HAS_FAISS = False

DEFAULT_MAX_BLOCK_ELEMENTS = 1 << 26
METRICS = ("cosine", "l2")
TRACEABLE_BACKEND = "traceable"
BACKENDS = ("auto", "torch", "faiss", TRACEABLE_BACKEND)
BANK_CHUNK_ROWS = 1024  # bank rows per distance block of the traceable backend: [queries, 1024] floats at a time


def faiss_available() -> bool:
    """True when the optional faiss package imports."""
    return _HAS_FAISS


def _check_inputs(queries: torch.Tensor, bank: torch.Tensor, metric: str, backend: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose one of {METRICS}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {BACKENDS}")
    if backend == "faiss" and not _HAS_FAISS:
        raise ImportError("backend='faiss' needs faiss: pip install 'adpretrain-hf[cpu]' (or [gpu]), or use backend='torch'")
    if queries.dim() != 2 or bank.dim() != 2:
        raise ValueError(f"queries and bank must be 2-D [n, d], got {tuple(queries.shape)} and {tuple(bank.shape)}")
    if bank.shape[0] == 0:
        raise ValueError("the reference bank is empty: give at least one reference feature")
    if queries.shape[1] != bank.shape[1]:
        raise ValueError(f"feature widths differ: queries have {queries.shape[1]}, the bank {bank.shape[1]}")


def _torch_search(
    queries: torch.Tensor, bank: torch.Tensor, metric: str, max_block_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact 1-NN by chunked matmul: blocks of ``rows x bank_rows`` stay under the limit."""
    bank = bank.to(device=queries.device)
    work = torch.float32 if queries.dtype in (torch.float16, torch.bfloat16) else queries.dtype
    q, b = queries.to(work), bank.to(work)
    if metric == "cosine":
        q, b = F.normalize(q, dim=1), F.normalize(b, dim=1)
    else:
        b_sq = (b * b).sum(dim=1)
    rows = max(1, max_block_elements // max(1, b.shape[0]))
    best_val = torch.empty(q.shape[0], dtype=work, device=q.device)
    best_idx = torch.empty(q.shape[0], dtype=torch.long, device=q.device)
    for start in range(0, q.shape[0], rows):
        block_q = q[start : start + rows]
        sims = block_q @ b.T  # [rows, M]
        if metric == "cosine":
            val, idx = sims.max(dim=1)
        else:
            # ||q-b||^2 = ||q||^2 - 2 q.b + ||b||^2 ; the argmin ignores ||q||^2.
            partial = b_sq.unsqueeze(0) - 2.0 * sims
            val, idx = partial.min(dim=1)
            val = (val + (block_q * block_q).sum(dim=1)).clamp_min_(0.0)
        best_val[start : start + rows], best_idx[start : start + rows] = val, idx
    return best_val, best_idx


def _traceable_search(queries: torch.Tensor, bank: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact 1-NN walking the bank in fixed chunks of :data:`BANK_CHUNK_ROWS` with a running best
    (a fixed, unrolled graph for ONNX); ties keep the lower index, as ``argmin``/``argmax``."""
    chunk_rows = BANK_CHUNK_ROWS
    q = queries.float()
    if metric == "cosine":
        q = F.normalize(q, dim=1)
    best_val = best_idx = None
    for start in range(0, bank.shape[0], chunk_rows):
        block = bank[start : start + chunk_rows].float()
        if metric == "cosine":  # one [n, m] block of cosines; kept as -cos so lower is closer
            val, idx = torch.mm(q, F.normalize(block, dim=1).T).max(dim=1)
            val = -val
        else:  # ||b||^2 - 2 q.b (||q||^2 is the same for every row: added after the min)
            val, idx = torch.addmm((block * block).sum(dim=1).unsqueeze(0), q, block.T, alpha=-2.0).min(dim=1)
        idx = idx + start
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val < best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx, best_idx)
    if metric == "cosine":
        return -best_val, best_idx
    return (best_val + (q * q).sum(dim=1)).clamp_min(0.0), best_idx


def _faiss_search(queries: torch.Tensor, bank: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    # copies: faiss.normalize_L2 works in place and must never touch the caller's tensors
    q = queries.detach().float().cpu().numpy().copy()
    b = bank.detach().float().cpu().numpy().copy()
    if metric == "cosine":
        faiss.normalize_L2(q)
        faiss.normalize_L2(b)
        index = faiss.IndexFlatIP(b.shape[1])
    else:
        index = faiss.IndexFlatL2(b.shape[1])
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:  # faiss-gpu with a visible GPU
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(b)
    dist, idx = index.search(q, 1)
    val = torch.from_numpy(dist[:, 0]).to(queries.device)
    return val, torch.from_numpy(idx[:, 0]).long().to(queries.device)


@torch.no_grad()
def nearest_neighbors(
    queries: torch.Tensor,
    bank: torch.Tensor,
    metric: str = "cosine",
    backend: str = "auto",
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest neighbour of each query row in ``bank``.

    Args:
        queries: ``[n, d]``.
        bank: ``[m, d]``, ``m >= 1``.
        metric: ``"cosine"`` (returns the cosine similarity, higher is closer) or
            ``"l2"`` (returns the *squared* L2 distance, lower is closer).
        backend: one of :data:`BACKENDS` (see the module docstring).
    Returns:
        ``(values [n], indices [n])`` on the queries' device.
    """
    _check_inputs(queries, bank, metric, backend)
    if backend == TRACEABLE_BACKEND:  # before the empty-batch branch: the traced batch stays dynamic
        return _traceable_search(queries, bank, metric)
    if queries.shape[0] == 0:
        empty = queries.new_empty(0)
        return empty, torch.empty(0, dtype=torch.long, device=queries.device)
    use_faiss = backend == "faiss" or (backend == "auto" and _HAS_FAISS and queries.device.type == "cpu")
    if use_faiss:
        return _faiss_search(queries, bank, metric)
    return _torch_search(queries, bank, metric, max_block_elements)


@torch.no_grad()
def batched_nearest_indices(
    queries: torch.Tensor, banks: torch.Tensor, metric: str = "cosine", max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS
) -> torch.Tensor:
    """Per-sample 1-NN: ``queries [B, n, d]`` against each sample's own ``banks [B, m, d]``.

    Training draws different references for every sample, so each has its own bank; a
    batched matmul (chunked over queries) does all samples at once. Returns ``[B, n]``.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose one of {METRICS}")
    if queries.dim() != 3 or banks.dim() != 3 or queries.shape[0] != banks.shape[0]:
        raise ValueError(f"expected queries [B, n, d] and banks [B, m, d], got {tuple(queries.shape)} and {tuple(banks.shape)}")
    if banks.shape[1] == 0:
        raise ValueError("a reference bank is empty: every sample needs at least one reference image")
    work = torch.float32 if queries.dtype in (torch.float16, torch.bfloat16) else queries.dtype
    q = queries.to(work)
    b = banks.to(device=queries.device, dtype=work)
    if metric == "cosine":
        q, b = F.normalize(q, dim=-1), F.normalize(b, dim=-1)
    else:
        b_sq = (b * b).sum(dim=-1).unsqueeze(1)  # [B, 1, m]
    rows = max(1, max_block_elements // max(1, b.shape[0] * b.shape[1]))
    out = torch.empty(q.shape[:2], dtype=torch.long, device=q.device)
    for start in range(0, q.shape[1], rows):
        sims = torch.bmm(q[:, start : start + rows], b.transpose(1, 2))
        out[:, start : start + rows] = sims.argmax(dim=-1) if metric == "cosine" else (b_sq - 2.0 * sims).argmin(dim=-1)
    return out
