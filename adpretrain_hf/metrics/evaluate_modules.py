"""``evaluate`` entry points for the metrics shipped inside the package.

Why local modules: ``evaluate.load("roc_auc")`` fetches scripts from the Hub, which breaks
offline runs; our modules live in ``metrics/modules/<name>/<name>.py`` (installed as
package data) and are loaded by path, so ``HF_EVALUATE_OFFLINE=1`` just works. Each module
imports the plain functions from ``adpretrain_hf.metrics``, so there is one implementation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .names import METRIC_NAMES

MODULES_DIR = Path(__file__).resolve().parent / "modules"


def metric_info(description: str, inputs_description: str, per_pixel: bool) -> Any:
    """The ``evaluate.MetricInfo`` of a shipped module (one place for the feature schema).

    Per-pixel metrics take one ``[H, W]`` map and mask per example as
    ``List(List(Value("float32")))`` (``datasets.Array2D(shape=(None, None))`` fails);
    masks are stored as float so that a stray 0.5 reaches the {0, 1} check instead of being
    truncated to 0 by an integer cast. Image metrics take one score and label per example.
    """
    import datasets
    import evaluate

    if per_pixel:
        grid = datasets.List(datasets.List(datasets.Value("float32")))
        features, numpy_format = datasets.Features({"predictions": grid, "references": grid}), None
    else:  # scalar features can come back as numpy arrays directly
        features = datasets.Features(
            {"predictions": datasets.Value("float64"), "references": datasets.Value("float32")}
        )
        numpy_format = "numpy"
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=features,
        format=numpy_format,
    )


def metric_module_path(name: str) -> Path:
    """Path of the shipped ``evaluate`` script for ``name`` (one of ``METRIC_NAMES``)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}: pass one of {METRIC_NAMES}")
    path = MODULES_DIR / name / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"the metric script {path} is missing: reinstall adpretrain-hf (the package data "
            "'modules/*/*.py' of adpretrain_hf.metrics was not installed)"
        )
    return path


def load_metric(name: str, **kwargs: Any) -> Any:
    """``evaluate.load`` of a shipped metric, by local path (no network).

    Args:
        name: ``"image_auroc"``, ``"pixel_auroc"`` or ``"aupro"``.
        **kwargs: forwarded to ``evaluate.load`` (e.g. ``cache_dir``, ``keep_in_memory``).

    Returns:
        an ``evaluate.Metric``; ``compute(predictions=..., references=...)`` returns
        ``{name: float}``.
    """
    import evaluate  # heavy (pulls datasets/pyarrow): only when asked for

    return evaluate.load(str(metric_module_path(name)), **kwargs)
