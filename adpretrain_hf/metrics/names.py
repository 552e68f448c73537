"""The metrics' names (keys of every results dict) and how reports label them.

One home, so the runner, its Markdown/CSV/plot reports, the model card and the demo cannot
disagree on which metrics exist or what they are called.
"""

from __future__ import annotations

from .aupro import AUPRO_FPR_LIMIT

METRIC_NAMES: tuple[str, ...] = ("image_auroc", "pixel_auroc", "aupro")
"""The paper's I-AUROC, P-AUROC and PRO (AUPRO up to FPR 0.3), all in [0, 1]."""
METRIC_LABELS: dict[str, str] = {"image_auroc": "I-AUROC", "pixel_auroc": "P-AUROC", "aupro": "PRO"}
"""Short labels (the paper's column names) for tables and plots."""
METRIC_CARD_LABELS: dict[str, str] = {**METRIC_LABELS, "aupro": f"AUPRO (FPR<={AUPRO_FPR_LIMIT})"}
"""Model-card labels: a card is read without the paper, so AUPRO names its integration limit."""
METRIC_DEFINITIONS: dict[str, str] = {
    "image_auroc": "I-AUROC",
    "pixel_auroc": "P-AUROC (all test pixels pooled)",
    "aupro": f"AUPRO, MVTec definition, area up to FPR {AUPRO_FPR_LIMIT} divided by {AUPRO_FPR_LIMIT}",
}
"""What each number is, written into ``results.json``."""

__all__ = ["METRIC_CARD_LABELS", "METRIC_DEFINITIONS", "METRIC_LABELS", "METRIC_NAMES"]
