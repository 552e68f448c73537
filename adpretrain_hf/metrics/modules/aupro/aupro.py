"""AUPRO as an ``evaluate`` metric (load with ``adpretrain_hf.metrics.load_metric``).

One example = one image: ``predictions`` its ``[H, W]`` anomaly map, ``references`` its
``[H, W]`` mask in {0, 1}; images without a defect are fine (all-zero mask). ``compute``
takes ``fpr_limit`` (default 0.3) and ``variant`` (``"mvtec"`` standard, ``"release"`` the
authors' non-standard number). ``evaluate`` imports this file standalone, so it imports the
installed package: one implementation, :func:`adpretrain_hf.metrics.aupro`.
"""

import evaluate

from adpretrain_hf.metrics import AUPRO_FPR_LIMIT, aupro, metric_info

_DESCRIPTION = """Normalised area under the per-region-overlap (PRO) curve up to a false-positive
rate of 0.3, with 8-connected ground-truth regions (MVTec AD's definition by default)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: anomaly maps, one [H, W] array / nested list per image (same H, W for all).
    references: masks, one [H, W] per image, values 0 (normal) / 1 (anomalous); at least one
        anomalous pixel overall.
    fpr_limit: upper FPR bound of the integral (default 0.3).
    variant: "mvtec" (default, exact curve) or "release" (200 thresholds, rescaled FPR axis).
Returns:
    {"aupro": float in [0, 1]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AUPRO(evaluate.Metric):
    """``evaluate`` wrapper of :func:`adpretrain_hf.metrics.aupro`."""

    def _info(self) -> evaluate.MetricInfo:
        return metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, per_pixel=True)

    def _compute(self, predictions, references, fpr_limit=AUPRO_FPR_LIMIT, variant="mvtec") -> dict:
        # Nested lists come back (evaluate's numpy format serves scalar features only).
        return {"aupro": aupro(predictions, references, fpr_limit=fpr_limit, variant=variant)}
