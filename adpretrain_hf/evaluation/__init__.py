"""The Table-1 runner: downstream detectors with backbone ("w/o") vs ADPretrain ("w/") features.

    >>> from adpretrain_hf.evaluation import evaluate_model
    >>> payload = evaluate_model("out/clip-large", "/data/mvtec_ad", methods=["patchcore"], output_dir="eval")
    >>> payload["results"]["mean"]["patchcore"]["pretrained"]["image_auroc"]

Modules, one job each:
    config: :class:`EvaluationConfig`, the checked settings.
    loading: dataset -> preprocessed tensors (one geometry for images and masks), Real-IAD split.
    protocols: train_fraction / train_shots / noise_ratio selections (seeded, per category).
    feature_cache: one backbone pass per image, features kept by image content and reference set.
    reference_sets: shared and per-image ("aligned") references, and their extractors.
    cell: one (category, method, features, seed) cell: fit, predict, metrics.
    report: aggregation (mean, std), markdown, JSON, CSV.
    plots: overlays (PIL, ``adpretrain_hf.overlays``) and the comparison chart (matplotlib, Agg canvas).
    runner: :func:`evaluate_model`, the orchestration.
See ``docs/EVALUATION.md``.
"""

from .cell import CellPredictions, CellResult, compute_metrics
from .config import FEATURE_KINDS, METRICS, REFERENCE_STRATEGY_CHOICES, EvaluationConfig, make_config
from .runner import evaluate_model, run_evaluation

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
