"""The Table-1 runner: downstream detectors with backbone ("w/o") vs ADPretrain ("w/") features.

    >>> from adpretrain_hf.evaluation import evaluate_model
    >>> payload = evaluate_model("out/clip-large", "/data/mvtec_ad", methods=["patchcore"], output_dir="eval")
    >>> payload["results"]["mean"]["patchcore"]["pretrained"]["image_auroc"]

Modules, one job each:
    config: :class:`EvaluationConfig`, the checked settings.
    loading: dataset -> preprocessed tensors (one geometry for images and masks), Real-IAD split.
    protocols: train_fraction / train_shots / noise_ratio selections (seeded, per category).
    image_feature_cache: one backbone pass per image, features kept by image content and reference set.
    reference_sets: shared and per-image ("aligned") references, and their extractors.
    cell: one (category, method, features, seed) cell: fit, predict, metrics.
    report: aggregation (mean, std), markdown, JSON, CSV.
    plots: overlays (PIL, ``adpretrain_hf.overlays``) and the comparison chart (matplotlib, Agg canvas).
    runner: :func:`evaluate_model`, the orchestration.
See ``docs/EVALUATION.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import METRICS, REFERENCE_STRATEGY_CHOICES, EvaluationConfig, make_config

# names whose modules import torch: loaded on first access (PEP 562), so the settings above stay
# light (``adpretrain evaluate --help`` builds its flags from EvaluationConfig without torch)
_LAZY_NAMES = {
    "FEATURE_KINDS": "adpretrain_hf.modeling.configuration_adpretrain",
    "CellPredictions": "adpretrain_hf.evaluation.cell",
    "CellResult": "adpretrain_hf.evaluation.cell",
    "compute_metrics": "adpretrain_hf.evaluation.cell",
    "evaluate_model": "adpretrain_hf.evaluation.runner",
    "run_evaluation": "adpretrain_hf.evaluation.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "FEATURE_KINDS",
    "METRICS",
    "REFERENCE_STRATEGY_CHOICES",
    "CellPredictions",
    "CellResult",
    "EvaluationConfig",
    "compute_metrics",
    "evaluate_model",
    "make_config",
    "run_evaluation",
]
