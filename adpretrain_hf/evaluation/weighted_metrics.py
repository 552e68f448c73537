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
  :class:`WeightedPRO`). Cost per cell: one sort per image plus a matrix product of the
  anomalous pixels' counts ``[Q, N]`` with the weights ``[N, B]``.

Each result equals the plain metric on the materialised resample (the stacked images,
``repeat``-ed by their weights) up to float rounding; ``tests/evaluation/test_weighted_metrics.py``
checks that.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..metrics import AUPRO_FPR_LIMIT, label_regions

CHUNK_ELEMENTS = 4_000_000
"""Anomalous pixels x resamples handled per vectorised step (float64: ~32 MB per temporary)."""


def pair_counts(scores: np.ndarray, positive: np.ndarray, image_of: np.ndarray, num_images: int) -> np.ndarray:
    """Doubled Mann-Whitney pair counts by image pair.

    Args:
        scores: ``[P]`` item scores (pixels or images).
        positive: ``[P]`` bool, the anomalous items.
        image_of: ``[P]`` image index of each item in ``0..num_images-1``.

    Returns:
        ``C [num_images, num_images]`` int64: ``C[i, j]`` = sum over positive items of image
        ``i`` and negative items of image ``j`` of ``2 [s_pos > s_neg] + [s_pos == s_neg]``.
    """
    counts = np.zeros((num_images, num_images), dtype=np.int64)
    pos_scores, pos_images = scores[positive], image_of[positive]
    neg_scores, neg_images = scores[~positive], image_of[~positive]
    if pos_scores.size == 0 or neg_scores.size == 0:
        return counts
    order = np.argsort(neg_images, kind="stable")
    bounds = np.searchsorted(neg_images[order], np.arange(num_images + 1))
    for j in range(num_images):
        negatives = np.sort(neg_scores[order[bounds[j]:bounds[j + 1]]])
        if negatives.size == 0:
            continue
        below = np.searchsorted(negatives, pos_scores, side="left")
        not_above = np.searchsorted(negatives, pos_scores, side="right")
        counts[:, j] = np.bincount(pos_images, weights=(below + not_above).astype(np.float64), minlength=num_images).astype(np.int64)
    return counts


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
    numerator = ((w @ counts) * w).sum(axis=1)
    denominator = 2 * (w @ positives.astype(np.int64)) * (w @ negatives.astype(np.int64))
    out = np.full(w.shape[0], np.nan)
    defined = denominator > 0
    out[defined] = numerator[defined] / denominator[defined]
    return out


class WeightedPRO:
    """One cell's pixels, arranged once to give the AUPRO of any resample weights.

    The area under the PRO curve up to the last point with FPR <= the limit is, for weights
    ``w``, ``w^T M(t) w / (N(w) R(w))`` (``N``: weighted normal pixels, ``R``: weighted regions,
    ``t``: the score of that point), where ``M_ji(t)`` sums, over the anomalous pixels ``q``
    of image ``i`` scoring ``>= t``, ``1/|region of q|`` times the normal pixels of image ``j``
    scoring in ``[t, s_q)`` (ties with ``s_q`` count one half: the trapezoid rule). The cut
    point ``t`` of each resample is found by a bisection over the distinct scores, all
    resamples at once; the last, interpolated trapezoid is added as in :func:`area_up_to`.

    Args:
        maps: ``[N, H, W]`` float anomaly maps.
        masks: ``[N, H, W]`` bool ground truth (some anomalous and some normal pixels).
        fpr_limit: the AUPRO integration limit (0.3 in the paper).
    """

    def __init__(self, maps: np.ndarray, masks: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> None:
        num_images = maps.shape[0]
        self.fpr_limit = float(fpr_limit)
        region_ids, sizes = label_regions(masks)
        flat, flat_masks = maps.reshape(num_images, -1), masks.reshape(num_images, -1)
        self.normal_sorted = [np.sort(flat[j][~flat_masks[j]]) for j in range(num_images)]  # ascending, per image
        self.normals_per_image = np.array([a.size for a in self.normal_sorted], dtype=np.int64)
        image_index = np.broadcast_to(np.arange(num_images).reshape(-1, 1, 1), masks.shape)
        region_image = np.zeros(sizes.size, dtype=np.int64)
        region_image[region_ids[masks]] = image_index[masks]
        self.regions_per_image = np.bincount(region_image[1:], minlength=num_images).astype(np.int64)
        scores, images = maps[masks].astype(np.float64), image_index[masks]
        inverse_size = 1.0 / sizes[region_ids[masks]]
        order = np.argsort(-scores, kind="stable")  # anomalous pixels, highest score first
        self.anomalous_scores, self.anomalous_image, self.anomalous_weight = scores[order], images[order], inverse_size[order]
        # Per image: anomalous scores ascending and the cumulative 1/|region| below each, for the overlap at t.
        self.anomalous_sorted, self.overlap_below = [], []
        for i in range(num_images):
            mine = np.flatnonzero(images == i)
            ascending = np.argsort(scores[mine], kind="stable")
            self.anomalous_sorted.append(scores[mine][ascending])
            self.overlap_below.append(np.concatenate(([0.0], np.cumsum(inverse_size[mine][ascending]))))
        self.thresholds = np.unique(maps.astype(np.float64))[::-1]  # the curve's points 1..T, descending

    def _normals_below(self, t: np.ndarray) -> np.ndarray:
        """``[B, N]`` normal pixels of each image scoring below ``t [B]`` (+inf: all)."""
        return np.stack([np.searchsorted(a, t, side="left") for a in self.normal_sorted], axis=1)

    def _overlap(self, t: np.ndarray) -> np.ndarray:
        """``[B, N]`` sum of ``1/|region|`` over each image's anomalous pixels scoring ``>= t [B]``."""
        return np.stack([c[-1] - c[np.searchsorted(a, t, side="left")] for a, c in zip(self.anomalous_sorted, self.overlap_below)], axis=1)

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
        # Bisection: the last curve point with FPR <= limit (FPR as the materialised curve computes it).
        low, high = np.zeros(rows.size, dtype=np.int64), np.full(rows.size, self.thresholds.size + 1, dtype=np.int64)
        while (high - low > 1).any():
            mid = (low + high) // 2
            inside = self._false_positives(w, self._point(mid)) / normals <= self.fpr_limit
            active = high - low > 1
            low = np.where(active & inside, mid, low)
            high = np.where(active & ~inside, mid, high)
        t = self._point(low)
        overlap = (self._overlap(t) * w).sum(axis=1)
        area = self._pair_sum(w, t) - (self._normals_below(t) * w).sum(axis=1) * overlap
        area = area / (normals * regions)
        # The last trapezoid, cut at the limit by linear interpolation (as area_up_to).
        x0 = self._false_positives(w, t) / normals
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

    def _pair_sum(self, w: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``[B]``: sum over anomalous ``q`` scoring ``>= t`` of ``w_i(q) / |region| * sum_j w_j (normals of j below s_q, ties 1/2)``."""
        total = np.zeros(w.shape[0])
        count = np.searchsorted(-self.anomalous_scores, -t, side="right")  # anomalous pixels scoring >= t, per resample
        needed = int(count.max())
        wt = w.T.astype(np.float64)  # [N, B]
        step = max(1, CHUNK_ELEMENTS // max(w.shape[0], w.shape[1]))
        for start in range(0, needed, step):
            scores = self.anomalous_scores[start:start + step]
            below = np.stack([np.searchsorted(a, scores, side="left") + np.searchsorted(a, scores, side="right")
                              for a in self.normal_sorted], axis=1) * 0.5  # [q, N]
            per_pixel = (below @ wt) * wt[self.anomalous_image[start:start + step]] * self.anomalous_weight[start:start + step, None]
            counted = np.arange(start, start + scores.size)[:, None] < count[None, :]
            total += np.where(counted, per_pixel, 0.0).sum(axis=0)
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
        pixel_images = np.repeat(images, maps[0].size)
        self.pixel_counts = pair_counts(maps.reshape(-1), masks.reshape(-1), pixel_images, num_images)
        self.pixel_pos = masks.reshape(num_images, -1).sum(axis=1)
        self.pixel_neg = maps[0].size - self.pixel_pos
        self.pro: Optional[WeightedPRO] = WeightedPRO(maps, masks, fpr_limit) if masks.any() and not masks.all() else None

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
