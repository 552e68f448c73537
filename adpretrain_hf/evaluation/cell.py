"""One cell of Table 1: one category, one method, one feature kind, one reference seed.

Build the detector on the extractor (with the detector protocol's options, e.g. ``variant="release"``),
fit on the (protocol-selected) training images, score the test images, run the protocol's
post-processing once over the whole test set (the release PaDiM's global min-max), compute
I-AUROC / P-AUROC / AUPRO. A metric a test set cannot define (no
anomalous image, or no anomalous pixel) is ``None`` rather than an exception: a Real-IAD
category whose NG views lack masks still gets its image AUROC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..detectors import TRAINED_METHODS, build_detector
from ..metrics import AUPRO_FPR_LIMIT, aupro, image_auroc, pixel_auroc
from .bootstrap import replicate_metrics
from .config import DEFAULT_PROTOCOL
from .protocols import apply_post_processing, protocol_detector_options


@dataclass
class CellPredictions:
    """What a detector produced for one cell, handed to ``prediction_hook`` (for audits and tests).

    ``maps [N, H, W]``, ``scores [N]``, ``labels [N]``, ``masks [N, H, W]`` in {0, 1}, all CPU float32.
    """

    category: str
    method: str
    features: str
    reference_seed: int
    maps: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    sample_ids: list[str]


PredictionHook = Callable[[CellPredictions], None]


@dataclass
class CellResult:
    """Metrics (in [0, 1] or ``None``) and bookkeeping of one cell."""

    category: str
    method: str
    features: str
    reference_seed: int
    metrics: dict[str, Optional[float]]
    num_train: int
    num_test: int
    fit_seconds: float
    predict_seconds: float
    replicates: Optional[dict[str, np.ndarray]] = field(default=None, repr=False)
    """``{metric: [B]}`` on the category's bootstrap resamples (:mod:`.bootstrap`); not written to JSON."""

    def to_json(self) -> dict[str, Any]:
        return {
            "category": self.category, "method": self.method, "features": self.features,
            "reference_seed": self.reference_seed, **self.metrics, "num_train": self.num_train,
            "num_test": self.num_test, "fit_seconds": round(self.fit_seconds, 3),
            "predict_seconds": round(self.predict_seconds, 3),
        }


def compute_metrics(maps: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> dict[str, Optional[float]]:
    """I-AUROC from ``scores [N]`` vs ``labels [N]``; P-AUROC and AUPRO (FPR <= 0.3) from ``maps`` vs ``masks [N, H, W]``."""
    has_both_labels = bool((labels == 0).any() and (labels == 1).any())
    has_both_pixels = bool((masks == 0).any() and (masks == 1).any())
    return {
        "image_auroc": image_auroc(scores, labels) if has_both_labels else None,
        "pixel_auroc": pixel_auroc(maps, masks) if has_both_pixels else None,
        "aupro": aupro(maps, masks, fpr_limit=AUPRO_FPR_LIMIT) if has_both_pixels else None,
    }


def detector_kwargs(method: str, quick: bool, batch_size: int, protocol: str = DEFAULT_PROTOCOL) -> dict[str, Any]:
    """Constructor arguments of a detector in the runner: the detector protocol's options (``protocol``,
    see ``protocols.DETECTOR_PROTOCOLS``), batch size, no inner bars, ``quick`` for trained ones."""
    kwargs: dict[str, Any] = {**protocol_detector_options(protocol, method), "batch_size": batch_size, "progress": False}
    if quick and method in TRAINED_METHODS:  # they train a network, and so take quick=
        kwargs["quick"] = True
    return kwargs


def run_cell(
    category: str,
    method: str,
    extractor: Any,
    train_pixel_values: torch.Tensor,
    test_pixel_values: torch.Tensor,
    test_labels: torch.Tensor,
    test_masks: torch.Tensor,
    *,
    reference_seed: int,
    quick: bool,
    batch_size: int,
    sample_ids: list[str],
    hook: Optional[PredictionHook] = None,
    bootstrap_weights: Optional[np.ndarray] = None,
    protocol: str = DEFAULT_PROTOCOL,
) -> tuple[CellResult, torch.Tensor, torch.Tensor]:
    """Fit ``method`` on ``train_pixel_values [N_tr, 3, H, W]``, score ``test_pixel_values [N_te, 3, H, W]``.

    Seeds torch with ``reference_seed`` first, so the random parts of a method (coreset
    projection, network initialisation) repeat. ``protocol`` (the detector protocol) gives the
    detector's options and the post-processing run on all ``N_te`` maps together (the hook, the
    metrics and the returned maps see the post-processed values). ``bootstrap_weights [B, N_te]`` (the category's
    resamples as image multiplicities) adds every metric on every resample to the result.
    Returns the result, the maps ``[N_te, H, W]`` and the image scores ``[N_te]``.
    """
    torch.manual_seed(reference_seed)
    detector = build_detector(method, extractor, **detector_kwargs(method, quick, batch_size, protocol))
    start = time.perf_counter()
    detector.fit(train_pixel_values)
    fitted = time.perf_counter()
    maps, scores = detector.predict(test_pixel_values)
    done = time.perf_counter()
    maps, scores = apply_post_processing(protocol, method, maps.float().cpu(), scores.float().cpu())
    if maps.shape != test_masks.shape:
        raise RuntimeError(f"{method} returned maps of shape {tuple(maps.shape)} for masks {tuple(test_masks.shape)}")
    metrics = compute_metrics(maps, scores, test_labels, test_masks)
    if hook is not None:
        hook(CellPredictions(category, method, extractor.feature_kind, reference_seed, maps, scores, test_labels, test_masks, sample_ids))
    result = CellResult(category, method, extractor.feature_kind, reference_seed, metrics, train_pixel_values.shape[0],
                        test_pixel_values.shape[0], fitted - start, done - fitted)
    if bootstrap_weights is not None:
        result.replicates = replicate_metrics(maps.numpy(), scores.numpy(), test_labels.numpy(), test_masks.numpy(), bootstrap_weights)
    return result, maps, scores
