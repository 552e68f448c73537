"""Anomaly-detection metrics: image AUROC, pixel AUROC and AUPRO.

Plain functions take torch tensors or numpy arrays (maps ``[N, H, W]``, masks ``[N, H, W]``
or ``[N, 1, H, W]`` in {0, 1}); ``load_metric(name)`` gives the same numbers as
``evaluate`` modules for pipelines that accumulate with ``add_batch``.
"""

from .aupro import AUPRO_FPR_LIMIT, AUPRO_VARIANTS, area_up_to, aupro, pro_curve
from .aupro_release import RELEASE_NUM_THRESHOLDS, release_pro_curve
from .auroc import image_auroc, pixel_auroc
from .evaluate_modules import load_metric, metric_info, metric_module_path
from .names import METRIC_DEFINITIONS, METRIC_LABELS, METRIC_NAMES
from .regions import label_regions

__all__ = [
    "AUPRO_FPR_LIMIT",
    "AUPRO_VARIANTS",
    "METRIC_DEFINITIONS",
    "METRIC_LABELS",
    "METRIC_NAMES",
    "RELEASE_NUM_THRESHOLDS",
    "area_up_to",
    "aupro",
    "image_auroc",
    "label_regions",
    "load_metric",
    "metric_info",
    "metric_module_path",
    "pixel_auroc",
    "pro_curve",
    "release_pro_curve",
]
