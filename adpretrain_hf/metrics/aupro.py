"""AUPRO: area under the per-region-overlap curve, the MVTec AD definition.

Why PRO and not pixel AUROC: large defects dominate pixel AUROC; PRO gives every connected
defect region the same weight, whatever its size. Definition (MVTec AD's official one,
also anomalib's >= 2.3):

- ground-truth regions are the 8-connected components of each mask;
- a threshold t marks pixels with score >= t; FPR(t) = false-positive pixels / all normal
  pixels, PRO(t) = mean over regions of (region pixels marked) / (region size);
- every distinct score is a threshold (sort all pixels of all images once, cumulative sums,
  keep the last point of each run of tied scores), so the curve is exact, not sampled;
- the area under PRO(FPR) from FPR = 0 to ``fpr_limit`` (trapezoids, the last one ending at
  a linearly interpolated point), divided by ``fpr_limit`` so a perfect map scores 1.

``variant="release"`` gives the authors' non-standard number instead (see
:mod:`.aupro_release`); report which one a table uses.
"""

from __future__ import annotations

import numpy as np

from ._inputs import ArrayLike, check_maps_and_masks
from .aupro_release import RELEASE_NUM_THRESHOLDS, release_aupro
from .regions import label_regions, require_normals_and_defects
from .sorting import sort_by_score

AUPRO_FPR_LIMIT = 0.3  # integration limit used by MVTec AD and the ADPretrain paper
AUPRO_VARIANTS = ("mvtec", "release")


def pro_curve(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact PRO curve over every distinct score, pooled over all images.

    Args:
        maps: ``[N, H, W]`` anomaly maps (higher = more anomalous); ``[N, 1, H, W]`` accepted.
        masks: ``[N, H, W]`` or ``[N, 1, H, W]`` ground truth in {0, 1}. Images without a
            defect are allowed: they only add normal pixels.

    Returns:
        ``(fpr [T + 1], pro [T + 1], thresholds [T])`` for the T distinct scores in
        decreasing order; ``fpr``/``pro`` start with the point (0, 0) (threshold above the
        maximum) and end at (1, 1).
    """
    score_maps, gt = check_maps_and_masks(maps, masks)
    require_normals_and_defects(gt)
    region_ids, sizes = label_regions(gt)
    num_regions = sizes.size - 1
    num_normal = int(sizes[0])

    keys, sorted_ids, to_scores = sort_by_score(score_maps.reshape(-1), region_ids.reshape(-1))

    # A pixel adds 1 to the false positives if normal, 1/|its region| to the PRO sum if not.
    false_positives = np.cumsum(sorted_ids == 0, dtype=np.int64)
    inverse_size = np.zeros(sizes.size, dtype=np.float64)
    inverse_size[1:] = 1.0 / sizes[1:]
    overlap_sum = np.cumsum(inverse_size[sorted_ids])
    del sorted_ids  # frees 80 MB per 10M pixels before the next temporaries

    # The curve at threshold t is the state after the *last* pixel with score t.
    last_of_tie = np.empty(keys.size, dtype=bool)
    np.not_equal(keys[1:], keys[:-1], out=last_of_tie[:-1])
    last_of_tie[-1] = True

    fpr = np.concatenate(([0.0], false_positives[last_of_tie] / num_normal))
    pro = np.concatenate(([0.0], np.clip(overlap_sum[last_of_tie] / num_regions, 0.0, 1.0)))
    return fpr, pro, to_scores(keys[last_of_tie])


def area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under the polyline (x, y) from x[0] to ``x_max``.

    ``x`` must be non-decreasing (vertical steps allowed). When ``x_max`` falls between two
    points, the polyline is cut there and the end point's y is linearly interpolated.
    """
    inside = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    area = float(np.trapezoid(y[:inside], x[:inside])) if inside > 1 else 0.0
    if 0 < inside < x.size and x[inside - 1] < x_max:
        x0, y0, x1, y1 = x[inside - 1], y[inside - 1], x[inside], y[inside]
        y_end = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += float(0.5 * (x_max - x0) * (y0 + y_end))
    return area


def aupro(
    maps: ArrayLike,
    masks: ArrayLike,
    fpr_limit: float = AUPRO_FPR_LIMIT,
    variant: str = "mvtec",
) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit``.

    Args:
        maps: ``[N, H, W]`` anomaly maps, torch or numpy, finite.
        masks: ``[N, H, W]`` or ``[N, 1, H, W]`` ground truth in {0, 1}; at least one
            anomalous and one normal pixel overall.
        fpr_limit: upper FPR bound of the integral, in (0, 1]; 0.3 in the paper.
        variant: ``"mvtec"`` (standard, exact curve, area / fpr_limit) or ``"release"``
            (the ADPretrain release's 200-threshold, min-max-rescaled number; not comparable
            with published MVTec-style AUPROs).

    Returns:
        AUPRO in [0, 1].
    """
    if variant not in AUPRO_VARIANTS:
        raise ValueError(f"unknown AUPRO variant {variant!r}: pass one of {AUPRO_VARIANTS}")
    if isinstance(fpr_limit, bool) or not isinstance(fpr_limit, (int, float, np.floating)):
        raise TypeError(
            f"fpr_limit must be a number, got {type(fpr_limit).__name__}: pass e.g. 0.3"
        )
    if not 0.0 < float(fpr_limit) <= 1.0:
        raise ValueError(f"fpr_limit={fpr_limit} is outside (0, 1]: pass e.g. 0.3")
    if variant == "release":
        score_maps, gt = check_maps_and_masks(maps, masks)
        return release_aupro(score_maps, gt, float(fpr_limit), RELEASE_NUM_THRESHOLDS)
    fpr, pro, _ = pro_curve(maps, masks)
    return area_up_to(fpr, pro, float(fpr_limit)) / float(fpr_limit)
