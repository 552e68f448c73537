"""Image-level AUROC as an ``evaluate`` metric (load with ``adpretrain_hf.metrics.load_metric``).

``evaluate.load`` copies this file into its module cache and imports it on its own, so it
cannot use relative imports; it imports the installed package instead, keeping one
implementation (``adpretrain_hf.metrics.image_auroc``).
"""

import evaluate

from adpretrain_hf.metrics import image_auroc, metric_info

_DESCRIPTION = """Area under the ROC curve of per-image anomaly scores (the paper's I-AUROC).
Ties count one half. Needs at least one normal and one anomalous image."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per-image anomaly scores (float, higher = more anomalous).
    references: per-image labels, 0 normal / 1 anomalous.
Returns:
    {"image_auroc": float in [0, 1]}
Example:
    >>> metric = adpretrain_hf.metrics.load_metric("image_auroc")
    >>> metric.compute(predictions=[0.1, 0.9, 0.4], references=[0, 1, 0])
    {'image_auroc': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ImageAUROC(evaluate.Metric):
    """``evaluate`` wrapper of :func:`adpretrain_hf.metrics.image_auroc`."""

    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, per_pixel=False)

    def _compute(self, predictions, references) -> dict:
        return {"image_auroc": image_auroc(predictions, references)}
