"""Per-image counts of negative items ranked below each positive, streamed in falling score order.

Why: the bootstrap's pixel AUROC and AUPRO (:mod:`.weighted_metrics`) both need, for every
anomalous pixel ``q`` (score ``s``) and every test image ``j``, the doubled count

    ``X_q[j] = #(normal pixels of j scoring < s) + #(normal pixels of j scoring <= s)``

(``2 [s > s_neg] + [s == s_neg]`` summed: a tie counts one half, the Mann-Whitney rule). One
binary search per (pixel, image) pair costs ``P N log M``; here the anomalous pixels are taken
highest score first, and the normal pixels are sorted once (all images together). Between two
consecutive *cuts* (the distinct positions ``#(normals < s)`` and ``#(normals <= s)`` in that
global order) only the normals in between change the counts, so a chunk of ``q`` pixels costs
one ``bincount`` of the normals it passes plus a cumulative sum over its ``K <= 2q`` cuts
(``[K, N]``). The rows are never materialised: callers sum them by image with a sparse
``[N, K]`` matrix (:func:`rows_by_image`) times the cut counts ``[K, N]``.
Every count is an integer (held in float64, exact below 2^53): the same whatever the chunking.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

CHUNK_ELEMENTS = 2_000_000
"""Cuts x images or normals handled per vectorised step (8 bytes each: ~16 MB per temporary)."""


_SIGN = np.uint32(0x80000000)
_SHIFT = np.uint64(32)


def _sort_float32_with_labels(scores: np.ndarray, labels: np.ndarray,
                              label_dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """``(scores ascending [M] float32, their labels [M] label_dtype)``, labels in ``0 .. 2^31 - 1``.

    Why: an ``argsort`` then two gathers of millions of pixels is ~10x slower than one ``np.sort`` of
    ``uint64`` keys ``(order-preserving bits of the score) << 32 | label`` (numpy's SIMD sort). Equal
    scores stay adjacent (-0.0 just before +0.0), which is all the cuts need. Little-endian machines only
    (the keys are split back into their two 32-bit words).
    """
    bits = np.ascontiguousarray(scores).view(np.uint32)
    # Negative floats: flip every bit; others: set the sign bit. Then unsigned order == float order.
    keys = (bits ^ ((bits.view(np.int32) >> 31).view(np.uint32) | _SIGN)).astype(np.uint64)
    keys <<= _SHIFT
    keys |= np.asarray(labels).astype(np.int64, copy=False).view(np.uint64)
    keys.sort()
    halves = keys.view(np.uint32).reshape(-1, 2)  # little-endian: [:, 1] the score bits, [:, 0] the label
    ordered = np.ascontiguousarray(halves[:, 1])
    bits = ordered ^ (((ordered >> 31) - np.uint32(1)) | _SIGN)  # sign bit set: clear it; else flip every bit
    return bits.view(np.float32), halves[:, 0].astype(label_dtype)


@dataclass
class StreamState:
    """Where the stream stands between chunks: ``counted [N]`` normals of each image below sorted position ``top``.

    Every later positive (scoring no higher) has both cuts ``<= top``; a stream resumed from a state gives the
    same counts as one run from the start.
    """

    counted: np.ndarray  # [N] float64 or int64, integer values
    top: int


@dataclass
class CountsChunk:
    """One chunk of the stream: positives ``start .. start + q - 1`` (in the caller's falling order).

    ``below [q]`` / ``not_above [q]``: each positive's two cuts, as row indices of ``at_cut``;
    ``at_cut [K, N]`` float64 (integer values, exact below 2^53): normals of each image ranked below each cut. ``X_q = at_cut[below[q]] +
    at_cut[not_above[q]]``; both indices are non-increasing in ``q``. ``after``: the state after this chunk.
    """

    start: int
    below: np.ndarray
    not_above: np.ndarray
    at_cut: np.ndarray
    after: StreamState


class CountsBelow:
    """The negatives of one cell, sorted once; :meth:`chunks` streams the counts of any falling positives.

    Args:
        scores: ``[M]`` negative items' scores (any float dtype; compared as given).
        images: ``[M]`` their image index in ``0..num_images-1``.
        num_images: ``N``.
    """

    def __init__(self, scores: np.ndarray, images: np.ndarray, num_images: int) -> None:
        # The order among tied scores never matters: every cut falls between two distinct scores.
        index = np.int32 if num_images <= np.iinfo(np.int32).max else np.int64  # halves the largest array
        if scores.dtype == np.float32 and sys.byteorder == "little":
            self.scores, self.images = _sort_float32_with_labels(scores, images, index)
        else:
            order = np.argsort(scores)
            self.scores, self.images = scores[order], np.asarray(images)[order].astype(index)  # ascending
        self.num_images = num_images
        self.per_image = np.bincount(self.images, minlength=num_images).astype(np.int64)

    def start(self) -> StreamState:
        """The state before the first positive: every normal counted."""
        return StreamState(self.per_image.copy(), self.scores.size)

    def chunks(self, descending: np.ndarray, rows: int, first: int = 0,
               state: Optional[StreamState] = None) -> Iterator[CountsChunk]:
        """Stream ``descending[first:]`` (positive scores, non-increasing) in chunks of ``rows`` positives.

        ``state``: the stream's state at ``first`` (a chunk's ``after``); None: from the start (``first`` 0).
        """
        if descending.size > 1 and (np.diff(descending) > 0).any():
            raise ValueError("positive scores must be sorted highest first: sort them with np.argsort(-scores)")
        n = self.num_images
        state = self.start() if state is None else state
        counted, top = state.counted, state.top
        for start in range(first, descending.size, rows):
            part = descending[start:start + rows]
            below = np.searchsorted(self.scores, part, side="left")
            not_above = np.searchsorted(self.scores, part, side="right")
            cuts = np.sort(np.concatenate((below, not_above)))  # (np.unique hashes: ~10x slower here)
            cuts = cuts[np.concatenate(([True], cuts[1:] != cuts[:-1]))]  # distinct, ascending, all <= top
            # Row k >= 1 of `steps`: the negatives in [cut k - 1, cut k) per image (row K: [last cut, top)).
            size = (cuts.size + 1) * n
            steps = np.zeros(size, dtype=np.int64) if top - cuts[0] > CHUNK_ELEMENTS else None
            bounds, offsets = np.append(cuts, top), np.arange(1, cuts.size + 1) * n  # offsets: rows 1..K, flat
            for block in range(int(cuts[0]), top, CHUNK_ELEMENTS):
                end = min(block + CHUNK_ELEMENTS, top)
                lengths = np.diff(np.clip(bounds, block, end))  # negatives of this block between consecutive cuts
                flat_index = np.repeat(offsets, lengths) + self.images[block:end]
                if steps is None:
                    steps = np.bincount(flat_index, minlength=size)  # the usual single block: no extra pass
                else:
                    steps += np.bincount(flat_index, minlength=size)
            if steps is None:
                steps = np.zeros(size, dtype=np.int64)  # no negative passed
            at_cut = steps.reshape(cuts.size + 1, n)[:-1].astype(np.float64)  # [K, N]: exact counts, as the products want
            at_cut[0] = counted - np.bincount(self.images[int(cuts[0]):top], minlength=n)  # below the lowest cut
            for k in range(1, cuts.size):  # running sum row by row: numpy's cumsum(axis=0) strides badly here
                at_cut[k] += at_cut[k - 1]
            below, not_above = np.searchsorted(cuts, below), np.searchsorted(cuts, not_above)
            counted, top = at_cut[not_above[-1]].copy(), int(cuts[not_above[-1]])  # the next chunk's cuts are all <= this one
            yield CountsChunk(start, below, not_above, at_cut, StreamState(counted, top))


def rows_by_image(chunk: CountsChunk, images: np.ndarray, values: np.ndarray, first: int, stop: int,
                  num_rows: int) -> tuple[Any, slice]:
    """``(A, cut_slice)``: sparse ``A [num_rows, k]`` with ``A @ chunk.at_cut[cut_slice]`` = the chunk's rows
    ``first .. stop - 1`` (chunk positions), each times ``values``, summed into row ``images`` of the result.

    ``images``, ``values``: ``[stop - first]``, or ``[m, stop - first]`` for ``m`` sums at once (give each its
    own output rows, e.g. ``images + N``). Only the cuts those rows use are touched (indices are monotone), so
    a slice of rows costs its own size.
    """
    from scipy import sparse  # here, not at import: the evaluation names stay light

    below, not_above = chunk.below[first:stop], chunk.not_above[first:stop]
    low, high = int(below[-1]), int(not_above[0]) + 1
    images, values = np.atleast_2d(images), np.atleast_2d(values)
    columns = np.tile(np.concatenate((below, not_above)) - low, images.shape[0])
    matrix = sparse.csr_matrix((np.concatenate((values, values), axis=1).ravel(),
                                (np.concatenate((images, images), axis=1).ravel(), columns)),
                               shape=(num_rows, high - low))
    return matrix, slice(low, high)
