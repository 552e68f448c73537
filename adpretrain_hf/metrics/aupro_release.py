"""AUPRO as the ADPretrain release computes it — a NON-STANDARD number, kept for comparison.

Why it exists: the authors' tables were produced with it, so reproducing them needs it. Why
it is not the default: it differs from MVTec AD's AUPRO (``variant="mvtec"``) in ways that
change the value, usually upwards:

1. the curve is sampled at ``RELEASE_NUM_THRESHOLDS`` = 200 equally spaced thresholds
   ``t_k = min + k * (max - min) / 200`` (k = 0..199) instead of at every distinct score;
   a pixel is marked when ``score > t_k`` (strictly);
2. only points with FPR < ``fpr_limit`` are kept — no interpolated end point at the limit;
3. the kept FPRs are min-max rescaled to [0, 1] before the area (``sklearn.metrics.auc``),
   so the x-range actually covered (which may end well below the limit, and need not
   start at 0) is stretched to full width.

Connected regions (8-connected), per-region overlap and the pooled FPR are the same as in
the standard definition. (The release builds the thresholds with ``np.arange``, which can
yield a 201st one by rounding; here there are always exactly 200.)
"""

from __future__ import annotations

import numpy as np

from .regions import label_regions, require_normals_and_defects

RELEASE_NUM_THRESHOLDS = 200  # thresholds of the release's sampled PRO curve


def release_pro_curve(
    maps: np.ndarray, masks: np.ndarray, num_thresholds: int = RELEASE_NUM_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PRO and FPR at equally spaced thresholds, vectorised with histograms.

    Args:
        maps: ``[N, H, W]`` finite float scores (already validated).
        masks: ``[N, H, W]`` bool ground truth (already validated).
        num_thresholds: K, the number of thresholds.

    Returns:
        ``(fpr [K], pro [K], thresholds [K])`` in increasing threshold order.
    """
    require_normals_and_defects(masks)
    low, high = float(maps.min()), float(maps.max())
    if not high > low:
        raise ValueError(
            "the release AUPRO needs maps with at least two distinct values (its thresholds "
            "span min..max), but every score is equal: use variant='mvtec'"
        )
    thresholds = low + np.arange(num_thresholds) * ((high - low) / num_thresholds)
    region_ids, sizes = label_regions(masks)
    bins = num_thresholds + 1

    # Pixel p is marked at threshold k  <=>  t_k < score_p  <=>  k < passed_p, where
    # passed_p = number of thresholds strictly below the pixel's score.
    passed = np.searchsorted(thresholds, maps.reshape(-1), side="left")
    counts = np.bincount(region_ids.reshape(-1).astype(np.int64) * bins + passed,
                         minlength=sizes.size * bins).reshape(sizes.size, bins)
    # marked[r, k] = pixels of region r (0 = normal) with passed > k: a suffix sum.
    marked = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]

    fpr = marked[0] / sizes[0]
    pro = (marked[1:] / sizes[1:, None]).mean(axis=0)
    return fpr, pro, thresholds


def release_aupro(
    maps: np.ndarray,
    masks: np.ndarray,
    fpr_limit: float,
    num_thresholds: int = RELEASE_NUM_THRESHOLDS,
) -> float:
    """The release's AUPRO number (see the module docstring for how it differs).

    Args:
        maps: ``[N, H, W]`` finite float scores; masks: ``[N, H, W]`` bool.
        fpr_limit: keep points with FPR strictly below it.
        num_thresholds: thresholds of the sampled curve (200 in the release).
    """
    fpr, pro, _ = release_pro_curve(maps, masks, num_thresholds)
    kept = fpr < fpr_limit
    fpr_kept, pro_kept = fpr[kept], pro[kept]
    if fpr_kept.size < 2 or fpr_kept.max() == fpr_kept.min():
        raise ValueError(
            f"the release AUPRO is undefined here: fewer than two distinct FPR values below "
            f"{fpr_limit} among its {num_thresholds} thresholds (the min-max rescaling would "
            "divide by zero); use variant='mvtec'"
        )
    rescaled = (fpr_kept - fpr_kept.min()) / (fpr_kept.max() - fpr_kept.min())
    from sklearn.metrics import auc  # here, not at import: the settings modules import metric names light

    return float(auc(rescaled, pro_kept))
