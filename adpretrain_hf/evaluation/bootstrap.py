"""Paired bootstrap intervals over test images for every w/ - w/o (and res. - w/o) difference.

Why: a category's test split holds tens of images; a difference of a few AUROC points between
two feature sets can be noise of which images happen to be in it. The interval answers "how
much would this difference move with another test set drawn like this one".

- **Paired**: one set of resamples per category, shared by every cell (method, feature kind,
  reference seed) of it, so w/ and w/o are always scored on the same images.
- **Resampling**: test images with replacement, within the normal and within the anomalous
  images separately (a stratified bootstrap, as pROC's default for AUROC): every resample
  keeps the split's class counts, so I-AUROC is defined in each. Pixel metrics resample whole
  images (a pixel's neighbours are not independent draws).
- **Interval**: the percentile interval of the resampled differences. With several reference
  sets the difference is (mean over sets of w/) - w/o, the sets held fixed: the interval covers
  test-image variation only; the ± std in the tables is the reference-set variation; training
  seeds are covered by neither. The "mean" row resamples every category independently and
  averages the categories' differences per resample.

Each cell's metrics for all resamples come from :mod:`.weighted_metrics` (sorted once, resamples
as per-image weights).
"""

from __future__ import annotations

import zlib
from typing import Any, Optional, Sequence

import numpy as np

from .config import METRICS
from .weighted_metrics import ResampledMetrics

INTERVAL_COVERS = (
    "test images: a paired, stratified bootstrap (test images resampled with replacement within the normal and the "
    "anomalous images, the same resamples for both feature sets); reference sets are held fixed (averaged when "
    "there are several: their spread is the ± std); training seeds are not covered"
)
INTERVAL_METHOD = "percentile"
BASELINE_KIND = "backbone"
MIN_DEFINED_SHARE = 0.5
"""An interval needs the metric defined on at least this share of resamples (else its bounds are None)."""


def category_seed(seed: int, category: str) -> int:
    """The resampling seed of one category: ``seed`` mixed with a stable hash of its name (not Python's salted hash)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(category.encode("utf-8"))]).generate_state(1)[0])


def draw_indices(labels: Sequence[int], resamples: int, seed: int) -> np.ndarray:
    """``[resamples, N]`` test-image indices: each row draws ``len(class)`` images with replacement within each class.

    Rows keep the normal images first, then the anomalous ones (in ``labels`` order of the classes).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        parts.append(members[rng.integers(0, members.size, size=(resamples, members.size))])
    return np.concatenate(parts, axis=1) if parts else np.zeros((resamples, 0), dtype=np.int64)


def weights_from_indices(indices: np.ndarray, num_images: int) -> np.ndarray:
    """``[B, N]`` multiplicities (how often each image is drawn) of ``indices [B, N']``."""
    offsets = np.arange(indices.shape[0])[:, None] * num_images
    counts = np.bincount((indices + offsets).ravel(), minlength=indices.shape[0] * num_images)
    return counts.reshape(indices.shape[0], num_images).astype(np.int32)


def replicate_metrics(maps: Any, scores: Any, labels: Any, masks: Any, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of one cell on every resample: ``{metric: [B]}`` (NaN where undefined), ``weights [B, N]``."""
    return ResampledMetrics(maps, scores, labels, masks)(weights)


def percentile_interval(differences: np.ndarray, confidence: float) -> tuple[Optional[float], Optional[float], int]:
    """``(low, high, defined resamples)`` of ``differences [B]``; bounds None when too few are defined."""
    defined = differences[np.isfinite(differences)]
    if defined.size == 0 or defined.size < MIN_DEFINED_SHARE * differences.size:
        return None, None, int(defined.size)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(defined, [alpha, 1.0 - alpha])
    return float(low), float(high), int(defined.size)


def _cell_replicates(runs: Sequence[Any], category: str, method: str, kind: str) -> Optional[dict[str, np.ndarray]]:
    """``{metric: [B]}`` of one (category, method, kind), averaged over its reference seeds."""
    cells = [r for r in runs if (r.category, r.method, r.features) == (category, method, kind) and r.replicates is not None]
    if not cells:
        return None
    return {m: np.mean([c.replicates[m] for c in cells], axis=0) for m in METRICS}


def _entry(observed: Optional[float], differences: Optional[np.ndarray], confidence: float) -> Optional[dict[str, Any]]:
    if observed is None or differences is None:
        return None
    low, high, defined = percentile_interval(differences, confidence)
    return {"difference": observed, "low": low, "high": high, "resamples_defined": defined}


def paired_intervals(
    runs: Sequence[Any], results: dict[str, Any], categories: Sequence[str], methods: Sequence[str], kinds: Sequence[str],
    *, resamples: int, confidence: float, seed: int, mean_row: str,
) -> dict[str, Any]:
    """The ``"intervals"`` block of ``results.json``.

    ``{"covers", "method", "resamples", "confidence", "seed", "baseline", "results": {category | mean_row:
    {method: {kind: {metric: {"difference", "low", "high", "resamples_defined"} | None}}}}}`` for every
    kind other than the backbone (``difference`` = the tables' kind - backbone, in [0, 1] units).
    """
    compared = [k for k in kinds if k != BASELINE_KIND] if BASELINE_KIND in kinds else []
    table: dict[str, Any] = {}
    per_category_differences: dict[tuple[str, str, str], list[np.ndarray]] = {}
    for category in categories:
        for method in methods:
            base = _cell_replicates(runs, category, method, BASELINE_KIND)
            for kind in compared:
                other = _cell_replicates(runs, category, method, kind)
                scores = results.get(category, {}).get(method, {})
                for metric in METRICS:
                    observed = _observed(scores, kind, metric)
                    differences = other[metric] - base[metric] if base is not None and other is not None else None
                    if observed is not None and differences is not None:
                        per_category_differences.setdefault((method, kind, metric), []).append(differences)
                    entry = _entry(observed, differences, confidence)
                    table.setdefault(category, {}).setdefault(method, {}).setdefault(kind, {})[metric] = entry
    for method in methods:
        for kind in compared:
            scores = results.get(mean_row, {}).get(method, {})
            for metric in METRICS:
                stacked = per_category_differences.get((method, kind, metric))
                differences = np.mean(np.stack(stacked), axis=0) if stacked else None  # NaN where a category is undefined: dropped
                table.setdefault(mean_row, {}).setdefault(method, {}).setdefault(kind, {})[metric] = _entry(
                    _observed(scores, kind, metric), differences, confidence)
    return {"covers": INTERVAL_COVERS, "method": INTERVAL_METHOD, "resamples": resamples, "confidence": confidence,
            "seed": seed, "baseline": BASELINE_KIND, "results": table}


def _observed(scores: dict[str, Any], kind: str, metric: str) -> Optional[float]:
    """The tables' difference ``kind - backbone`` of one metric, or None."""
    value, base = scores.get(kind, {}).get(metric), scores.get(BASELINE_KIND, {}).get(metric)
    return None if value is None or base is None else float(value - base)
