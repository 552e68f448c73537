"""I-AUROC, P-AUROC and AUPRO of many bootstrap resamples at once, each given as per-image weights.

Why: a bootstrap resample of test images draws image ``i`` ``w[i]`` times (0, 1, 2, ...).
Materialising every resample and calling the plain metrics re-sorts millions of pixels a
thousand times. Here the pixels are sorted (or paired) once per cell, and a resample is only
its weight vector ``w [N]``:

- **AUROC** (image and pixel) is the Mann-Whitney statistic, a sum over (positive, negative)
  pairs. Grouped by the images the two items come from, it is a quadratic form:
  ``AUROC(w) = w^T C w / (2 P(w) N(w))`` with ``C [N, N]`` the doubled pair counts
  (``2 [s_pos > s_neg] + [s_pos == s_neg]``, integers, counted once) and ``P(w)``, ``N(w)``
  the weighted numbers of positives and negatives. Exact integer arithmetic per resample.
- **AUPRO** (the MVTec definition of :mod:`adpretrain_hf.metrics.aupro`): the trapezoid
  area under the PRO curve is also a pair sum (anomalous pixel x normal pixel ranked below
  it, weighted by 1 / region size), so up to a resample's FPR cut it is again a quadratic
  form in ``w``; the cut is found by bisection over the distinct scores (see
  :class:`WeightedPRO`).

Cost per cell: one sort of all normal pixels, then one stream over the anomalous pixels
(:mod:`.ranked_pairs`: anomalous pixels x images, integers) that sums both ``C`` and the PRO's
pair matrix; a call costs a bisection (``[B, N]`` per step) and a few chunks of that stream.
Memory is bounded by chunking (:data:`.ranked_pairs.CHUNK_ELEMENTS`) and
:data:`CHECKPOINT_BYTES`; nothing of size resamples x pixels is built.

Each result equals the plain metric on the materialised resample (the stacked images,
``repeat``-ed by their weights) up to float rounding; ``tests/evaluation/test_weighted_metrics.py``
checks that.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..metrics import AUPRO_FPR_LIMIT, label_regions
from .ranked_pairs import CHUNK_ELEMENTS, CountsBelow, StreamState, rows_by_image

CHECKPOINT_BYTES = 64 * 2**20
"""Memory for :class:`WeightedPRO`'s checkpoints of its ``[N, N]`` pair sums (float64)."""
BISECTION_GRID = 2048
"""Grid points of the PRO curve tabulated per image: a call's bisection starts from ~T / 2048 points, not T."""
FLOAT64_EXACT_INTEGERS = 2**53
"""Every integer of magnitude below this is a float64, and so is every sum of such integers that stays below it."""


def pair_counts(scores: np.ndarray, positive: np.ndarray, image_of: np.ndarray, num_images: int) -> np.ndarray:
    """Doubled Mann-Whitney pair counts by image pair.

    Args:
        scores: ``[P]`` item scores (pixels or images).
        positive: ``[P]`` bool, the anomalous items.
        image_of: ``[P]`` image index of each item in ``0..num_images-1``.

    Returns:
        ``C [num_images, num_images]`` int64: ``C[i, j]`` = sum over positive items of image
        ``i`` and negative items of image ``j`` of ``2 [s_pos > s_neg] + [s_pos == s_neg]``
        (integers: exact). Cost: one sort, then positives x images (:mod:`.ranked_pairs`).
    """
    positive = np.asarray(positive, dtype=bool)
    image_of = np.asarray(image_of).astype(np.int64)
    if not positive.any() or positive.all():
        return np.zeros((num_images, num_images), dtype=np.int64)
    order = np.argsort(-scores[positive], kind="stable")
    return _summed_counts(CountsBelow(scores[~positive], image_of[~positive], num_images),
                          scores[positive][order], image_of[positive][order], num_images)


def _summed_counts(below: CountsBelow, descending: np.ndarray, images: np.ndarray, num_images: int) -> np.ndarray:
    """``C [N, N]``: the doubled counts of positives ``descending [P]`` (of ``images [P]``) summed by image."""
    counts = np.zeros((num_images, num_images), dtype=np.int64)
    for chunk in below.chunks(descending, _chunk_rows(num_images)):
        q = chunk.below.size
        matrix, cuts = rows_by_image(chunk, images[chunk.start:chunk.start + q], np.ones(q, dtype=np.int64), 0, q, num_images)
        counts += matrix @ chunk.at_cut[cuts].astype(np.int64)  # integer products: exact at any size
    return counts


def _chunk_rows(num_images: int) -> int:
    return max(1, CHUNK_ELEMENTS // (2 * num_images))  # a chunk has up to 2 cuts per row


def weighted_auroc(counts: np.ndarray, positives: np.ndarray, negatives: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of each resample from :func:`pair_counts`.

    Args:
        counts: ``[N, N]`` doubled pair counts.
        positives, negatives: ``[N]`` positive / negative items per image.
        weights: ``[B, N]`` non-negative integer multiplicities.

    Returns:
        ``[B]`` AUROC, NaN where a resample has no positive or no negative item.
    """
    w = weights.astype(np.int64)
    numerator = (_exact_product(w, counts) * w).sum(axis=1)
    denominator = 2 * (w @ positives.astype(np.int64)) * (w @ negatives.astype(np.int64))
    out = np.full(w.shape[0], np.nan)
    defined = denominator > 0
    out[defined] = numerator[defined] / denominator[defined]
    return out


def _exact_product(w: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``w @ counts`` for int64 ``w [B, N]``, ``counts [N, N]``: in float64 (BLAS, ~50x numpy's integer loop) when
    every partial sum is bounded below 2^53, so each is exact and the int64 result equals the integer product."""
    bound = int(np.abs(w).sum(axis=1).max(initial=0)) * int(np.abs(counts).max(initial=0))
    if bound < FLOAT64_EXACT_INTEGERS:
        return (w.astype(np.float64) @ counts.astype(np.float64)).astype(np.int64)
    return w @ counts


class WeightedPRO:
    """One cell's pixels, arranged once to give the AUPRO of any resample weights.

    The area under the PRO curve up to the last point with FPR <= the limit is, for weights
    ``w``, ``w^T M(t) w / (N(w) R(w))`` (``N``: weighted normal pixels, ``R``: weighted regions,
    ``t``: the score of that point), where ``M_ji(t)`` sums, over the anomalous pixels ``q``
    of image ``i`` scoring ``>= t``, ``1/|region of q|`` times the normal pixels of image ``j``
    scoring in ``[t, s_q)`` (ties with ``s_q`` count one half: the trapezoid rule). The cut
    point ``t`` of each resample is found by a bisection over the distinct scores, all
    resamples at once; the last, interpolated trapezoid is added as in :func:`area_up_to`.

    Cost: the setup streams every anomalous pixel once (:mod:`.ranked_pairs`), summing the pixel
    AUROC's pair counts and ``M`` (up to each pixel) on the way, and keeps ``M`` and the stream's
    state at a few checkpoints (at most :data:`CHECKPOINT_BYTES`). A call resumes the stream from
    the checkpoint below the resamples' smallest count of pixels ``>= t``: their counts differ
    little (the cut is a pooled FPR), so a call streams a few chunks, not the whole cell.

    Args:
        maps: ``[N, H, W]`` float anomaly maps.
        masks: ``[N, H, W]`` bool ground truth (some anomalous and some normal pixels).
        fpr_limit: the AUPRO integration limit (0.3 in the paper).
    """

    def __init__(self, maps: np.ndarray, masks: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> None:
        num_images = maps.shape[0]
        self.num_images = num_images
        self.fpr_limit = float(fpr_limit)
        region_ids, sizes = label_regions(masks)
        flat, flat_masks = maps.reshape(num_images, -1), masks.reshape(num_images, -1)
        # Per image, ascending, float64 (a float32 array searched with float64 thresholds is cast on every search).
        self.normal_sorted = [np.sort(flat[j][~flat_masks[j]]).astype(np.float64) for j in range(num_images)]
        self.normals_per_image = np.array([a.size for a in self.normal_sorted], dtype=np.int64)
        # Boolean indexing keeps stack order, so each pixel's image is a repeat of the image numbers by count.
        normal_images = np.repeat(np.arange(num_images, dtype=np.int32), self.normals_per_image)
        self.below = CountsBelow(flat[~flat_masks], normal_images, num_images)  # all normals, sorted once
        del normal_images
        images = np.repeat(np.arange(num_images), flat.shape[1] - self.normals_per_image)  # anomalous pixels' images
        region_image = np.zeros(sizes.size, dtype=np.int64)
        region_image[region_ids[masks]] = images
        self.regions_per_image = np.bincount(region_image[1:], minlength=num_images).astype(np.int64)
        native = flat[flat_masks]  # anomalous pixels, in stack order
        scores, inverse_size = native.astype(np.float64), 1.0 / sizes[region_ids[masks]]
        order = np.argsort(-scores, kind="stable")  # anomalous pixels, highest score first
        self.anomalous_scores, self.anomalous_image, self.anomalous_weight = scores[order], images[order], inverse_size[order]
        self.anomalous_native = native[order]  # the stream compares in the maps' dtype, as the normals are sorted
        # Per image: anomalous scores ascending and the cumulative 1/|region| below each, for the overlap at t.
        by_image = np.lexsort((scores, images))  # image, then score; stable: stack order among ties
        bounds = np.searchsorted(images[by_image], np.arange(num_images + 1))
        self.anomalous_sorted, self.overlap_below = [], []
        for i in range(num_images):
            mine = by_image[bounds[i]:bounds[i + 1]]
            self.anomalous_sorted.append(scores[mine])
            self.overlap_below.append(np.concatenate(([0.0], np.cumsum(inverse_size[mine]))))
        self.thresholds = np.unique(flat).astype(np.float64)[::-1]  # the curve's points 1..T, descending
        # False positives of each image at a grid of curve points: brackets every resample's cut in one product.
        self.grid = np.unique(np.linspace(0, self.thresholds.size, BISECTION_GRID + 1).round().astype(np.int64))
        self.grid_false_positives = (self.normals_per_image - self._normals_below(self._point(self.grid))).T.astype(np.float64)
        self._stream_once()

    def _stream_once(self) -> None:
        """One pass over the anomalous pixels: the pixel pair counts, and ``M`` with the stream state at checkpoints."""
        n = self.num_images
        self.half_weight = 0.5 * self.anomalous_weight  # the rows hold doubled counts
        self._pixel_counts = np.zeros((n, n), dtype=np.int64)
        pairs = np.zeros((n, n))
        rows = _chunk_rows(n)
        chunks = -(-self.anomalous_native.size // rows)
        every = max(1, -(-chunks // max(1, CHECKPOINT_BYTES // pairs.nbytes)))
        state = self.below.start()
        # Every partial sum of the pair counts is at most their total, 2 (anomalous) (normal pixels): exact in float64?
        exact_in_float = 2 * self.anomalous_native.size * self.below.scores.size < FLOAT64_EXACT_INTEGERS
        self._checkpoints: list[tuple[int, StreamState, np.ndarray]] = []  # (first row, state there, M of rows before)
        for index, chunk in enumerate(self.below.chunks(self.anomalous_native, rows, 0, state)):
            if index % every == 0:
                self._checkpoints.append((chunk.start, state, pairs.copy()))
            q = chunk.below.size
            done = slice(chunk.start, chunk.start + q)
            images = self.anomalous_image[done]
            if exact_in_float:  # both sums in one product: rows 0..N-1 count, rows N..2N-1 weigh by 1/(2 |region|)
                matrix, cuts = rows_by_image(chunk, np.stack((images, images + n)),
                                             np.stack((np.ones(q), self.half_weight[done])), 0, q, 2 * n)
                both = matrix @ chunk.at_cut[cuts]
                self._pixel_counts += both[:n].astype(np.int64)
                pairs += both[n:]
            else:
                matrix, cuts = rows_by_image(chunk, images, np.ones(q, dtype=np.int64), 0, q, n)
                self._pixel_counts += matrix @ chunk.at_cut[cuts].astype(np.int64)
                matrix, cuts = rows_by_image(chunk, images, self.half_weight[done], 0, q, n)
                pairs += matrix @ chunk.at_cut[cuts]
            state = chunk.after

    def pair_counts(self) -> np.ndarray:
        """The pixel AUROC's :func:`pair_counts` (anomalous x normal pixels), summed in the setup's one pass."""
        return self._pixel_counts.copy()

    def _per_image(self, sorted_arrays: list, t: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        """``[B, N]``: for each image, the items of its ascending array scoring below ``t [B]`` (a transposed view).

        The queries are searched in ascending order (numpy's binary search then starts from the previous hit).
        """
        order = np.argsort(t)
        ascending = t[order]
        out = np.empty((len(sorted_arrays), t.size), dtype=np.int64)
        for j, a in enumerate(sorted_arrays):
            out[j, order] = np.searchsorted(a, ascending, side="left")
        return out.T

    def _normals_below(self, t: np.ndarray) -> np.ndarray:
        """``[B, N]`` normal pixels of each image scoring below ``t [B]`` (+inf: all)."""
        return self._per_image(self.normal_sorted, t)

    def _overlap(self, t: np.ndarray) -> np.ndarray:
        """``[B, N]`` sum of ``1/|region|`` over each image's anomalous pixels scoring ``>= t [B]``."""
        below = self._per_image(self.anomalous_sorted, t)
        return np.stack([c[-1] - c[below[:, i]] for i, c in enumerate(self.overlap_below)], axis=1)

    def _point(self, k: np.ndarray) -> np.ndarray:
        """Threshold of curve point ``k [B]`` (0: the origin, above every score)."""
        return np.where(k > 0, self.thresholds[np.maximum(k - 1, 0)], np.inf)

    def _false_positives(self, w: np.ndarray, t: np.ndarray) -> np.ndarray:
        return ((self.normals_per_image - self._normals_below(t)) * w).sum(axis=1)

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """AUPRO of each resample ``weights [B, N]`` -> ``[B]``; NaN without normal or anomalous pixels."""
        w = weights.astype(np.int64)
        normals, regions = w @ self.normals_per_image, w @ self.regions_per_image
        out = np.full(w.shape[0], np.nan)
        rows = np.flatnonzero((normals > 0) & (regions > 0))
        if rows.size == 0:
            return out
        w, normals, regions = w[rows], normals[rows], regions[rows]
        # Bisection: the last curve point with FPR <= limit (FPR as the materialised curve computes it), started from
        # the grid points around it. FPR is non-decreasing in the point, so the bracket holds the same answer.
        low, high = self._bracket(w, normals)
        while (high - low > 1).any():
            mid = (low + high) // 2
            inside = self._false_positives(w, self._point(mid)) / normals <= self.fpr_limit
            active = high - low > 1
            low = np.where(active & inside, mid, low)
            high = np.where(active & ~inside, mid, high)
        t = self._point(low)
        overlap = (self._overlap(t) * w).sum(axis=1)
        normals_below = (self._normals_below(t) * w).sum(axis=1)
        area = self._pair_sum(w, t) - normals_below * overlap
        area = area / (normals * regions)
        # The last trapezoid, cut at the limit by linear interpolation (as area_up_to).
        x0 = (normals - normals_below) / normals
        cut = (low < self.thresholds.size) & (x0 < self.fpr_limit)
        if cut.any():
            t1 = self._point(np.minimum(low + 1, self.thresholds.size))
            x1 = self._false_positives(w, t1) / normals
            y0 = np.clip(overlap / regions, 0.0, 1.0)
            y1 = np.clip((self._overlap(t1) * w).sum(axis=1) / regions, 0.0, 1.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                y_end = y0 + (y1 - y0) * (self.fpr_limit - x0) / (x1 - x0)
            area = np.where(cut, area + 0.5 * (self.fpr_limit - x0) * (y0 + y_end), area)
        out[rows] = area / self.fpr_limit
        return out

    def _bracket(self, w: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high) [B]``: grid points with FPR ``<=`` the limit at ``low`` and ``>`` it at ``high`` (or ``T + 1``).

        The false positives at the grid, ``w @ grid_false_positives`` (float64 sums of integers below 2^53: exact),
        divided by ``normals`` as the bisection does: the same comparisons.
        """
        inside = (w.astype(np.float64) @ self.grid_false_positives) / normals[:, None] <= self.fpr_limit  # [B, G]
        last = inside.sum(axis=1) - 1  # the grid's first point (the origin) is always inside
        grid = np.append(self.grid, self.thresholds.size + 1)
        return grid[last], grid[last + 1]

    def _pair_sum(self, w: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``[B]``: ``w^T M(t) w`` with ``M_ij(t)`` = sum over image ``i``'s anomalous pixels ``q`` scoring ``>= t`` of
        ``1/|region of q|`` times image ``j``'s normals below ``s_q`` (ties 1/2).

        A resample stopping at pixel count ``c`` (pixels scoring ``>= t``) inside a chunk gets ``w^T M w`` at the
        chunk's start plus its own rows up to ``c`` (``X [r, N] @ W^T``, masked): two matrix products per chunk that
        holds stops, not one per distinct stop (small BLAS calls cost most of their time in thread start-up).
        Memory: ``M [N, N]``, one chunk of cut counts and ``[r, resamples stopping in the chunk]``.
        """
        n = self.num_images
        total = np.zeros(w.shape[0])
        stops = np.searchsorted(-self.anomalous_scores, -t, side="right")  # anomalous pixels scoring >= t, per resample
        if stops.max() == 0:
            return total  # no pixel counted: every form is 0
        weights = w.astype(np.float64)
        first, state, pairs = [c for c in self._checkpoints if c[0] < stops[stops > 0].min()][-1]
        pairs = pairs.copy()
        for chunk in self.below.chunks(self.anomalous_native[:stops.max()], _chunk_rows(n), first, state):
            rows = chunk.below.size
            here = np.flatnonzero((stops > chunk.start) & (stops <= chunk.start + rows))
            if here.size:
                stopping = weights[here]  # [b, N]
                need = int(stops[here].max()) - chunk.start
                cut_rows = chunk.at_cut[chunk.below[:need]] + chunk.at_cut[chunk.not_above[:need]]
                done = slice(chunk.start, chunk.start + need)
                per_row = (cut_rows @ stopping.T) * stopping.T[self.anomalous_image[done]] * self.half_weight[done, None]
                counted = np.arange(need)[:, None] < (stops[here] - chunk.start)[None, :]
                total[here] = ((stopping @ pairs) * stopping).sum(axis=1) + np.where(counted, per_row, 0.0).sum(axis=0)
            if chunk.start + rows < stops.max():
                done = slice(chunk.start, chunk.start + rows)
                matrix, cuts = rows_by_image(chunk, self.anomalous_image[done], self.half_weight[done], 0, rows, n)
                pairs += matrix @ chunk.at_cut[cuts]
        return total


class ResampledMetrics:
    """One cell's predictions, precomputed once; :meth:`__call__` gives every metric for resample weights.

    Args:
        maps: ``[N, H, W]`` anomaly maps; scores: ``[N]`` image scores; labels: ``[N]`` in {0, 1};
        masks: ``[N, H, W]`` in {0, 1} (numpy or torch).
    """

    def __init__(self, maps, scores, labels, masks, fpr_limit: float = AUPRO_FPR_LIMIT) -> None:  # type: ignore[no-untyped-def]
        maps = np.asarray(maps, dtype=np.float32)
        masks = np.asarray(masks) > 0.5
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels).astype(bool)
        num_images = maps.shape[0]
        self.num_images = num_images
        images = np.arange(num_images)
        self.image_counts = pair_counts(scores, labels, images, num_images)
        self.image_pos, self.image_neg = labels.astype(np.int64), (~labels).astype(np.int64)
        self.pro: Optional[WeightedPRO] = WeightedPRO(maps, masks, fpr_limit) if masks.any() and not masks.all() else None
        # The pixel pair counts come from the PRO's stream when it exists (the same anomalous x normal pixels);
        # without it every pixel is of one kind: no pair, all zeros.
        self.pixel_counts = self.pro.pair_counts() if self.pro is not None else np.zeros((num_images, num_images), dtype=np.int64)
        self.pixel_pos = masks.reshape(num_images, -1).sum(axis=1)
        self.pixel_neg = maps[0].size - self.pixel_pos

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """``{"image_auroc", "pixel_auroc", "aupro"} -> [B]`` for ``weights [B, N]`` (NaN: undefined there)."""
        if weights.ndim != 2 or weights.shape[1] != self.num_images:
            raise ValueError(f"weights must be [resamples, {self.num_images}] image multiplicities, got {weights.shape}")
        aupro = self.pro(weights) if self.pro is not None else np.full(weights.shape[0], np.nan)
        return {
            "image_auroc": weighted_auroc(self.image_counts, self.image_pos, self.image_neg, weights),
            "pixel_auroc": weighted_auroc(self.pixel_counts, self.pixel_pos, self.pixel_neg, weights),
            "aupro": aupro,
        }
