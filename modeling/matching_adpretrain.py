"""Exact nearest-neighbour search against a bank prepared once (faiss optional).

Residual features need, for every patch token, its nearest neighbour in a small bank of
normal reference tokens (cosine matching, as the release does); PatchCore needs the L2
nearest neighbour in its memory bank. Both are exact searches over banks of 10^3-10^6
rows, so one function serves both.

Why a :class:`PreparedBank`: the bank is fixed while a detector is deployed, so everything that
depends on it alone is done once, not per image: normalised (cosine) or scaled by -2 with its
squared row norms appended as one more column (L2: ``[q, 1] . [-2b, |b|^2] = |b|^2 - 2 q.b``, so
the norm add is fused into the GEMM; no broadcast ``copy_`` of the norms into each block),
transposed and contiguous (``[d', m]``) on the device. :func:`prepare_bank` keeps one per live,
unchanged bank tensor (keyed by identity and version), so callers passing the same buffer every
call pay the preparation once; a detector warms it on load by calling it.

The search (eager) walks ``[query block x bank block]`` distance blocks of about 1 MiB (they stay
in a core's L2 cache, so the GEMM runs at its rate) keeping a running best value per query with
the vectorised ``amin`` and the winning block's number; the index is then found by one more GEMM
per query against its winning block only (``1 / blocks`` extra work, cheaper than an
index-tracking min over every block). The full query x bank matrix is never materialised.

Backends:
- ``"torch"`` / ``"auto"``: the blocked search above on the queries' device (the GPU path when
  tensors live on a GPU). ``max_block_elements`` caps a distance block further.
- ``"faiss"``: ``IndexFlatIP`` / ``IndexFlatL2`` (GPU index when faiss-gpu sees a GPU); builds its
  index per call.
- ``"traceable"``: in eager the same blocked search; while tracing (ONNX export) a fixed graph that
  walks the bank in chunks of ``BANK_CHUNK_ROWS`` rows with a running best (``[queries, chunk]``
  at a time, so the exported graph's memory stays bounded; only the batch dimension is dynamic).
  How the graph finds the index is a per-runtime choice (:func:`traced_index_style`):
  ``"winning-chunk"`` (default) keeps a running ``ReduceMin`` and the winning chunk's number, then
  one ``ArgMin`` per chunk over only the queries it won (``NonZero`` + ``Gather`` + ``ScatterND``),
  the graph form of the eager search; ``"topk"`` takes ``TopK(1)`` of every chunk. Measured on
  layer 0 of EfficientNet-Lite0 at 224 px (3136 queries x 25,088 references x 24, 1 thread): the
  GEMMs alone take 33 ms in onnxruntime, whose ``TopK`` adds 70 ms and ``ReduceMin`` 11 ms
  (winning-chunk: 48 ms in all, topk: 104 ms); OpenVINO's ``TopK`` is cheap (topk: 45 ms,
  winning-chunk: 54 ms), so its export traces ``"topk"``.

Ties keep the lower bank index (``argmin``/``argmax`` order) in every backend but faiss.
This file is part of the remote-code bundle: faiss is optional and imported in ``try:``.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from typing import Iterator, Optional, Union

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
BANK_CHUNK_ROWS = 512  # bank rows per distance block (eager and traced graph alike)
SEARCH_BLOCK_ELEMENTS = 1 << 18  # query rows x bank rows of one eager block: 1 MiB fp32, fits a core's L2
PREPARED_CACHE_MAX_ELEMENTS = 1 << 26  # banks above this are prepared per call, not kept (memory)
TRACED_INDEX_STYLES = ("winning-chunk", "topk")  # how a traced search finds its index (module docstring)
_TRACED_INDEX_STYLE: contextvars.ContextVar[str] = contextvars.ContextVar("traced_index_style", default=TRACED_INDEX_STYLES[0])
SEARCH_ENTRY_POINTS = ("_prepared_search", "_faiss_search")  # what benchmarks/latency.py times


def faiss_available() -> bool:
    """True when the optional faiss package imports."""
    return _HAS_FAISS


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is searched in float32 (half precision loses neighbours)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class PreparedBank:
    """A bank ``[m, d]`` laid out once for repeated exact 1-NN searches (see the module docstring).

    ``keys_t``: ``[d, m]`` (cosine: ``-normalize(bank)``, so lower is closer) or ``[d + 1, m]`` (L2:
    ``[-2 bank, |bank|^2]``), contiguous, float32 (float64 for a float64 bank), on the bank's device.
    ``bank`` is the caller's tensor itself (the residual gathers its raw rows); the copies
    :func:`prepare_bank` keeps hold it weakly (``weak=True``), so a cached preparation never keeps
    its bank alive.
    """

    def __init__(
        self, bank: torch.Tensor, metric: str = "cosine", dtype: Optional[torch.dtype] = None, weak: bool = False
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: choose one of {METRICS}")
        if bank.dim() != 2:
            raise ValueError(f"a bank must be 2-D [m, d], got {tuple(bank.shape)}")
        if bank.shape[0] == 0:
            raise ValueError("the reference bank is empty: give at least one reference feature")
        self._bank = weakref.ref(bank) if weak else (lambda: bank)
        self.metric = metric
        self.rows, self.dim = int(bank.shape[0]), int(bank.shape[1])
        with torch.no_grad():
            b = bank.detach().to(_work_dtype(dtype or bank.dtype))
            if metric == "cosine":
                keys = -F.normalize(b, dim=1)
            else:
                keys = torch.cat([-2.0 * b, (b * b).sum(dim=1, keepdim=True)], dim=1)
            self.keys_t = keys.T.contiguous()

    @property
    def bank(self) -> torch.Tensor:
        """The raw bank ``[m, d]`` this was prepared from."""
        bank = self._bank()
        if bank is None:
            raise RuntimeError("the bank of this PreparedBank was freed: keep the tensor, or build PreparedBank(bank) directly")
        return bank

    @property
    def device(self) -> torch.device:
        return self.keys_t.device

    @property
    def dtype(self) -> torch.dtype:
        return self.keys_t.dtype

    def to(self, device: Union[str, torch.device]) -> "PreparedBank":
        """This bank on ``device`` (itself when it is already there)."""
        target = torch.device(device)
        if target.type == self.device.type and target.index in (None, self.device.index):
            return self
        return PreparedBank(self.bank.to(device), self.metric, self.dtype)

    def search(self, queries: torch.Tensor, max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries [n, d]`` -> ``(values [n], indices [n])``: cosine similarity or squared L2."""
        return _prepared_search(queries, self, max_block_elements)


_PREPARED: dict[tuple, tuple] = {}  # (id(bank), metric, dtype, device) -> (weakref, state, PreparedBank)


def prepare_bank(bank: Union[torch.Tensor, PreparedBank], metric: str = "cosine", dtype: Optional[torch.dtype] = None) -> PreparedBank:
    """The :class:`PreparedBank` of ``bank`` for ``metric``, built once while ``bank`` lives unchanged.

    Call it when a bank is set or loaded (a detector's ``from_pretrained``, ``set_references``) to pay
    the preparation there; the searches given the same tensor later find it here. A bank changed in
    place (its version moves), moved or freed is prepared again. While tracing it is built inline.
    """
    if isinstance(bank, PreparedBank):
        if bank.metric != metric:
            raise ValueError(f"this bank was prepared for metric {bank.metric!r}, not {metric!r}: prepare it again")
        return bank
    dtype = _work_dtype(dtype or bank.dtype)
    if _tracing() or bank.numel() > PREPARED_CACHE_MAX_ELEMENTS:
        return PreparedBank(bank, metric, dtype)
    key = (id(bank), metric, dtype, bank.device)
    state = (bank._version, bank.data_ptr(), tuple(bank.shape))
    hit = _PREPARED.get(key)
    if hit is not None and hit[0]() is bank and hit[1] == state:
        return hit[2]
    prepared = PreparedBank(bank, metric, dtype, weak=True)
    _PREPARED[key] = (weakref.ref(bank, lambda _, key=key: _PREPARED.pop(key, None)), state, prepared)
    return prepared


def _query_matrix(queries: torch.Tensor, prepared: PreparedBank) -> torch.Tensor:
    """``[n, d]`` -> the left GEMM operand: normalised (cosine) or with a ones column (L2)."""
    q = queries.to(device=prepared.device, dtype=prepared.dtype)
    if prepared.metric == "cosine":
        return F.normalize(q, dim=1)
    return torch.cat([q, torch.ones_like(q[:, :1])], dim=1)


def _finish(q: torch.Tensor, best: torch.Tensor, metric: str) -> torch.Tensor:
    """Block minima -> cosine similarity, or squared L2 (``+ |q|^2``, clamped at 0)."""
    if metric == "cosine":
        return -best
    plain = q[:, :-1]
    return (best + (plain * plain).sum(dim=1)).clamp_min(0.0)


@contextlib.contextmanager
def traced_index_style(style: str) -> Iterator[None]:
    """Within the block, searches traced for export find their index by ``style`` (one of
    :data:`TRACED_INDEX_STYLES`; which runtime favours which: the module docstring)."""
    if style not in TRACED_INDEX_STYLES:
        raise ValueError(f"unknown traced index style {style!r}: choose one of {TRACED_INDEX_STYLES}")
    token = _TRACED_INDEX_STYLE.set(style)
    try:
        yield
    finally:
        _TRACED_INDEX_STYLE.reset(token)


def _traced_search(q: torch.Tensor, prepared: PreparedBank) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed graph over bank chunks of :data:`BANK_CHUNK_ROWS` (ONNX: dynamic query count)."""
    if prepared.rows > BANK_CHUNK_ROWS and _TRACED_INDEX_STYLE.get() == "winning-chunk":
        return _traced_winning_chunk_search(q, prepared)
    return _traced_topk_search(q, prepared)


def _traced_topk_search(q: torch.Tensor, prepared: PreparedBank) -> tuple[torch.Tensor, torch.Tensor]:
    """``TopK(1)`` of every chunk and a running best."""
    best_val = best_idx = None
    for start in range(0, prepared.rows, BANK_CHUNK_ROWS):
        # TopK(1) rather than min(dim=1): onnxruntime runs one TopK faster than ReduceMin + ArgMin;
        # ONNX TopK keeps the lower index among equal values
        val, idx = torch.mm(q, prepared.keys_t[:, start : start + BANK_CHUNK_ROWS]).topk(1, dim=1, largest=False)
        val, idx = val[:, 0], idx[:, 0] + start
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val < best_val  # strict: ties keep the earlier chunk's (lower) index
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx, best_idx)
    return best_val, best_idx


def _traced_winning_chunk_search(q: torch.Tensor, prepared: PreparedBank) -> tuple[torch.Tensor, torch.Tensor]:
    """Running ``ReduceMin`` with the winning chunk's number, then each chunk's ``ArgMin`` over the
    queries it won only (the eager search's second pass, as graph ops)."""
    starts = range(0, prepared.rows, BANK_CHUNK_ROWS)
    best_val = best_chunk = None
    for j, start in enumerate(starts):
        val = torch.mm(q, prepared.keys_t[:, start : start + BANK_CHUNK_ROWS]).amin(dim=1)
        if best_val is None:
            best_val, best_chunk = val, torch.zeros_like(val, dtype=torch.long)
        else:
            better = val < best_val  # strict: ties keep the earlier chunk; ArgMin then the lower index in it
            best_val = torch.where(better, val, best_val)
            best_chunk = best_chunk.masked_fill(better, j)
    best_idx = torch.zeros_like(best_chunk)
    for j, start in enumerate(starts):
        won = torch.nonzero(best_chunk == j)[:, 0]
        idx = torch.mm(q.index_select(0, won), prepared.keys_t[:, start : start + BANK_CHUNK_ROWS]).argmin(dim=1)
        best_idx = best_idx.index_put((won,), idx + start)
    return best_val, best_idx


def _blocked_search(q: torch.Tensor, prepared: PreparedBank, max_block_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager search in cache-sized blocks: running ``amin`` + winning block, then its index."""
    keys, n = prepared.keys_t, q.shape[0]
    if n == 0:
        return q.new_empty(0), torch.empty(0, dtype=torch.long, device=q.device)
    cols = min(prepared.rows, BANK_CHUNK_ROWS)
    rows = max(1, min(SEARCH_BLOCK_ELEMENTS, max_block_elements) // cols)
    starts = range(0, prepared.rows, cols)
    if len(starts) == 1:  # one bank block: a single index-tracking min per query block
        pairs = [torch.mm(q[s : s + rows], keys).min(dim=1) for s in range(0, n, rows)]
        return torch.cat([v for v, _ in pairs]), torch.cat([i for _, i in pairs])
    best_val = torch.full((n,), float("inf"), dtype=q.dtype, device=q.device)
    best_block = torch.zeros(n, dtype=torch.long, device=q.device)
    for s in range(0, n, rows):
        block_q, val, block = q[s : s + rows], best_val[s : s + rows], best_block[s : s + rows]
        for j, c in enumerate(starts):
            candidate = torch.mm(block_q, keys[:, c : c + cols]).amin(dim=1)
            better = candidate < val  # strict: ties keep the earlier block; NaN never wins (block 0 recomputes it)
            block.masked_fill_(better, j)
            torch.minimum(val, candidate, out=val)
    values = torch.empty_like(best_val)
    indices = torch.empty_like(best_block)
    order = torch.argsort(best_block, stable=True)
    position = 0
    for j, count in enumerate(torch.bincount(best_block, minlength=len(starts)).tolist()):
        if count:  # the queries whose best lies in block j: their index within it
            chosen = order[position : position + count]
            position += count
            c = starts[j]
            val, idx = torch.mm(q.index_select(0, chosen), keys[:, c : c + cols]).min(dim=1)
            values[chosen], indices[chosen] = val, idx + c
    return values, indices


def _prepared_search(queries: torch.Tensor, prepared: PreparedBank, max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS):
    """Exact 1-NN of ``queries [n, d]`` in a prepared bank: ``(values [n], indices [n])`` on the queries' device."""
    q = _query_matrix(queries, prepared)
    if _tracing():
        best, idx = _traced_search(q, prepared)
    else:
        best, idx = _blocked_search(q, prepared, max_block_elements)
    return _finish(q, best, prepared.metric).to(queries.device), idx.to(queries.device)


def _check_inputs(queries: torch.Tensor, bank, metric: str, backend: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose one of {METRICS}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {BACKENDS}")
    if backend == "faiss" and not _HAS_FAISS:
        raise ImportError("backend='faiss' needs faiss: pip install 'adpretrain-hf[cpu]' (or [gpu]), or use backend='torch'")
    rows, width = (bank.rows, bank.dim) if isinstance(bank, PreparedBank) else (None, None)
    if queries.dim() != 2 or (rows is None and bank.dim() != 2):
        raise ValueError(f"queries and bank must be 2-D [n, d], got {tuple(queries.shape)} and {tuple(bank.shape)}")
    if rows is None:
        rows, width = bank.shape
    if rows == 0:
        raise ValueError("the reference bank is empty: give at least one reference feature")
    if queries.shape[1] != width:
        raise ValueError(f"feature widths differ: queries have {queries.shape[1]}, the bank {width}")


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
    bank: Union[torch.Tensor, PreparedBank],
    metric: str = "cosine",
    backend: str = "auto",
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest neighbour of each query row in ``bank``.

    Args:
        queries: ``[n, d]``.
        bank: ``[m, d]``, ``m >= 1``, or its :class:`PreparedBank` (a plain tensor is prepared once
            and kept while it lives unchanged: :func:`prepare_bank`).
        metric: ``"cosine"`` (returns the cosine similarity, higher is closer) or
            ``"l2"`` (returns the *squared* L2 distance, lower is closer).
        backend: one of :data:`BACKENDS` (see the module docstring).
    Returns:
        ``(values [n], indices [n])`` on the queries' device.
    """
    _check_inputs(queries, bank, metric, backend)
    if backend == "faiss":
        if queries.shape[0] == 0:
            return queries.new_empty(0), torch.empty(0, dtype=torch.long, device=queries.device)
        return _faiss_search(queries, bank.bank if isinstance(bank, PreparedBank) else bank, metric)
    if not isinstance(bank, PreparedBank):
        bank = bank.to(queries.device)
    prepared = prepare_bank(bank, metric, queries.dtype).to(queries.device)
    return _prepared_search(queries, prepared, max_block_elements)


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
