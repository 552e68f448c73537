"""Pixel-level AUROC as an ``evaluate`` metric (load with ``adpretrain_hf.metrics.load_metric``).

One example = one image: ``predictions`` its ``[H, W]`` anomaly map, ``references`` its
``[H, W]`` mask in {0, 1}. ``evaluate`` copies this file into its module cache and imports
it on its own (no relative imports), so it imports the installed package: one
implementation, :func:`adpretrain_hf.metrics.pixel_auroc`. Maps travel through Arrow and
Python lists here; for a whole category held in memory the plain function is cheaper.
"""

import evaluate

from adpretrain_hf.metrics import metric_info, pixel_auroc

_DESCRIPTION = """Area under the ROC curve over all pixels of all images pooled (P-AUROC)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: anomaly maps, one [H, W] array / nested list per image (same H, W for all).
    references: masks, one [H, W] per image, values 0 (normal) / 1 (anomalous).
Returns:
    {"pixel_auroc": float in [0, 1]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PixelAUROC(evaluate.Metric):
    """``evaluate`` wrapper of :func:`adpretrain_hf.metrics.pixel_auroc`."""

    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, per_pixel=True)

    def _compute(self, predictions, references) -> dict:
        # Nested lists come back (evaluate's numpy format serves scalar features only); the
        # plain function converts them and rejects ragged sizes with a clear error.
        return {"pixel_auroc": pixel_auroc(predictions, references)}
