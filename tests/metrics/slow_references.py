"""Slow, independent references and test data for the metric tests.

The references below share no code with ``adpretrain_hf.metrics``: AUROC is an explicit
pairwise (Mann-Whitney) count; AUPRO loops over every distinct score as a threshold,
labels regions with scikit-image (the package uses scipy), measures each region's overlap
one by one, and integrates segment by segment with explicit clipping at the FPR limit.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import label as sk_label

from adpretrain_hf.metrics import AUPRO_FPR_LIMIT, RELEASE_NUM_THRESHOLDS


TOL = 1e-6


# --------------------------------------------------------------------------- references
def slow_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count 1/2."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = 0.0
    for p in pos:
        wins += np.sum(p > neg) + 0.5 * np.sum(p == neg)
    return wins / (pos.size * neg.size)


def sk_regions(masks: np.ndarray, connectivity: int = 2) -> list[tuple[int, np.ndarray]]:
    """(image index, boolean region mask) for every connected region, via scikit-image."""
    regions = []
    for i, mask in enumerate(masks):
        labelled = sk_label(mask.astype(np.uint8), connectivity=connectivity)
        for r in range(1, labelled.max() + 1):
            regions.append((i, labelled == r))
    return regions


def slow_curve_at(maps, masks, thresholds, marked_fn, connectivity=2):
    """FPR and PRO at each threshold, one region at a time."""
    regions = sk_regions(masks, connectivity)
    normal = masks == 0
    fprs, pros = [], []
    for t in thresholds:
        marked = marked_fn(maps, t)
        fprs.append((marked & normal).sum() / normal.sum())
        pros.append(np.mean([marked[i][reg].sum() / reg.sum() for i, reg in regions]))
    return np.array(fprs), np.array(pros)


def slow_mvtec_curve(maps, masks, connectivity=2):
    """Every distinct score, highest first, as threshold (score >= t); starts at (0, 0)."""
    thresholds = sorted(np.unique(maps).tolist(), reverse=True)
    fpr, pro = slow_curve_at(maps, masks, thresholds, lambda m, t: m >= t, connectivity)
    return np.concatenate(([0.0], fpr)), np.concatenate(([0.0], pro))


def slow_clipped_area(x, y, limit):
    """Area of the polyline over [0, limit], segment by segment, cutting the last one."""
    area = 0.0
    for x0, y0, x1, y1 in zip(x[:-1], y[:-1], x[1:], y[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_cut = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_cut) / 2
            break
    return area


def slow_aupro(maps, masks, limit=AUPRO_FPR_LIMIT, connectivity=2):
    fpr, pro = slow_mvtec_curve(maps, masks, connectivity)
    return slow_clipped_area(fpr, pro, limit) / limit


def slow_release_aupro(maps, masks, limit=AUPRO_FPR_LIMIT):
    """200 thresholds min + k (max - min) / 200, score > t, keep FPR < limit, rescale, area."""
    lo, hi = float(maps.min()), float(maps.max())
    step = (hi - lo) / RELEASE_NUM_THRESHOLDS
    thresholds = [lo + k * step for k in range(RELEASE_NUM_THRESHOLDS)]
    fpr, pro = slow_curve_at(maps, masks, thresholds, lambda m, t: m > t)
    keep = fpr < limit
    f, p = fpr[keep], pro[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return sum(abs(f[i + 1] - f[i]) * (p[i] + p[i + 1]) / 2 for i in range(f.size - 1))


# --------------------------------------------------------------------------- test data
def blob_masks(rng, n=6, size=16, defect_prob=0.7) -> np.ndarray:
    """[n, size, size] uint8 masks: random ellipses, some single pixels, some empty images."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        if rng.random() > defect_prob:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.uniform(0.5, size / 4, 2)
            masks[i] |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
        if rng.random() < 0.5:
            masks[i, rng.integers(size), rng.integers(size)] = 1
    if masks.sum() == 0:
        masks[0, 3, 3] = 1
    return masks


def noisy_maps(rng, masks, signal=0.6, decimals=None) -> np.ndarray:
    maps = masks * signal + rng.random(masks.shape)
    return np.round(maps, decimals) if decimals is not None else maps
