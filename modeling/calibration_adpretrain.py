"""Thresholds and score normalisation of a fitted detector (pure math, no model).

A raw anomaly score means nothing to an inspection line: it needs a decision threshold and a
score on a fixed scale. Both are fitted on validation images, as anomalib does:

- normal images only: threshold = the ``q``-quantile of their scores (``q=0.99`` lets 1 % of
  normal images through as false alarms), optionally plus a margin relative to the score range;
- labelled images: the threshold maximising F1 over every observed score (anomalib's
  ``F1AdaptiveThreshold``, i.e. the best point of ``sklearn.metrics.precision_recall_curve``);
- normalisation: ``(s - threshold) / (max - min) + 0.5`` clipped to ``[0, 1]``, with min/max of
  the validation scores (anomalib's min-max normaliser), so the threshold maps to 0.5.

The same functions serve image scores ``[N]`` and pixel maps ``[N, H, W]`` (flattened).
Part of the remote-code bundle: imports only torch.
"""

from __future__ import annotations

from typing import Optional

import torch

DEFAULT_QUANTILE = 0.99
NORMALIZED_THRESHOLD = 0.5  # where the threshold lands on the normalised scale
MIN_SCORE_RANGE = 1e-12  # below this the validation scores are treated as constant


def _flat(values: torch.Tensor, what: str) -> torch.Tensor:
    values = torch.as_tensor(values).detach().reshape(-1).double().cpu()
    if values.numel() == 0:
        raise ValueError(f"no {what} to calibrate on: pass at least one validation image")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{what} contain NaN or inf: check the detector's outputs before calibrating")
    return values


def check_threshold_arguments(quantile: float, margin: float) -> None:
    """One-line errors for a quantile outside [0, 1] or a margin that is negative, NaN or inf
    (a NaN threshold would label every image normal)."""
    if not 0.0 <= quantile <= 1.0:  # also refuses NaN
        raise ValueError(f"quantile must be in [0, 1], got {quantile}: e.g. 0.99 for 1 % false alarms on normal images")
    if not margin >= 0 or margin == float("inf"):  # NaN fails >=
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")


def quantile_threshold(scores: torch.Tensor, quantile: float = DEFAULT_QUANTILE, margin: float = 0.0) -> float:
    """Threshold from normal scores only: their ``quantile`` (linear interpolation, as
    ``numpy.quantile``) plus ``margin * (max - min)``.

    ``quantile=1.0, margin=0.1`` is "max + 10 % of the range". Works on any number of values
    (``torch.quantile`` refuses more than 2^24, a few hundred pixel maps).
    """
    check_threshold_arguments(quantile, margin)
    values = _flat(scores, "scores").sort().values
    position = quantile * (values.numel() - 1)
    low = int(position)
    high = min(low + 1, values.numel() - 1)
    value = values[low] + (position - low) * (values[high] - values[low])
    return float(value + margin * (values[-1] - values[0]))


def f1_optimal_threshold(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The observed score ``t`` maximising F1 of the rule ``score >= t`` (anomalib's adaptive threshold).

    Args:
        scores: ``[N]`` (or any shape) raw scores.
        labels: same shape, 1/True = anomalous; both classes must be present.
    """
    values = _flat(scores, "scores")
    truth = torch.as_tensor(labels).detach().reshape(-1).cpu().bool()
    if truth.numel() != values.numel():
        raise ValueError(f"{truth.numel()} labels for {values.numel()} scores: give one label per score")
    positives = int(truth.sum())
    if positives == 0 or positives == truth.numel():
        raise ValueError("F1 calibration needs both normal and anomalous validation samples: pass labels with 0s and 1s, or calibrate on normal images only (labels=None)")
    order = torch.argsort(values, descending=True)
    sorted_scores, sorted_truth = values[order], truth[order].double()
    tp = torch.cumsum(sorted_truth, 0)
    fp = torch.cumsum(1.0 - sorted_truth, 0)
    # Only the last index of a run of equal scores is a threshold (ties go together).
    last = torch.ones_like(sorted_truth, dtype=torch.bool)
    last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    f1 = (2 * tp / (tp + fp + positives))[last]
    # Equal F1 at several thresholds: the lowest one, as sklearn/anomalib (argmax over ascending thresholds).
    best = int(torch.nonzero(f1 == f1.max()).max())
    return float(sorted_scores[last][best])


def score_range(scores: torch.Tensor) -> tuple[float, float]:
    """``(min, max)`` of the validation scores, for :func:`normalize_scores`."""
    values = _flat(scores, "scores")
    return float(values.min()), float(values.max())


def normalize_scores(scores: torch.Tensor, threshold: float, score_min: float, score_max: float) -> torch.Tensor:
    """Raw scores (any shape) -> ``[0, 1]`` with the threshold at 0.5 (anomalib's min-max rule).

    ``(s - threshold) / (score_max - score_min) + 0.5``, clipped; a constant validation set
    (``max == min``) uses a range of 1.
    """
    spread = score_max - score_min
    spread = spread if spread > MIN_SCORE_RANGE else 1.0
    return ((scores - threshold) / spread + NORMALIZED_THRESHOLD).clamp(0.0, 1.0)


def fit_threshold(
    scores: torch.Tensor, labels: Optional[torch.Tensor] = None, quantile: float = DEFAULT_QUANTILE, margin: float = 0.0
) -> tuple[float, str]:
    """``(threshold, how)``: F1-optimal with labels holding both classes, else a quantile of
    the normal scores (labels given: only those labelled 0)."""
    if labels is not None:
        truth = torch.as_tensor(labels).reshape(-1).bool()
        if bool(truth.any()) and not bool(truth.all()):
            return f1_optimal_threshold(scores, truth), "f1"
        if bool(truth.all()):
            raise ValueError("every validation sample is labelled anomalous: include normal images (label 0) to calibrate")
    tag = f"quantile:{quantile:g}" + (f"+margin:{margin:g}" if margin else "")
    return quantile_threshold(scores, quantile, margin), tag
