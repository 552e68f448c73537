"""Output classes of the model, and the read-only aliases that keep renamed fields working.

Why a module of its own: ``ADPretrainOutput`` and the detector folder's output share the
deprecation rule for fields renamed to the pipelines' per-image names (``scores`` -> ``score``),
and the model module stays about its computation. Part of the remote-code bundle.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from transformers.utils import ModelOutput


def renamed_field(new: str, old: str) -> property:
    """A read-only property ``old`` that warns (``FutureWarning``) and returns field ``new``.

    Output fields were renamed to the pipelines' per-image names (issue 14: ``scores`` ->
    ``score``); the old attribute keeps working for one release.
    """

    def getter(self: ModelOutput) -> Optional[torch.Tensor]:
        warnings.warn(
            f"{type(self).__name__}.{old} is deprecated and will be removed in the next release: use .{new} (same tensor)",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(self, new)

    return property(getter, doc=f"Deprecated: the old name of ``{new}``.")


@dataclass
class ADPretrainOutput(ModelOutput):
    """Outputs of :class:`ADPretrainModel` (shapes: the docstring of ``modeling_adpretrain``)."""

    features: Optional[tuple] = None
    residuals: Optional[tuple] = None
    backbone_features: Optional[tuple] = None
    anomaly_map: Optional[torch.Tensor] = None
    score: Optional[torch.Tensor] = None
    grid_sizes: Optional[tuple] = None

    scores = renamed_field("score", "scores")


@dataclass
class AnomalyDetectionOutput(ModelOutput):
    """Outputs of ``ADPretrainDetectorModel`` (shapes: the docstring of ``modeling_detector_adpretrain``)."""

    anomaly_map: Optional[torch.Tensor] = None
    score: Optional[torch.Tensor] = None
    normalized_score: Optional[torch.Tensor] = None
    label: Optional[torch.Tensor] = None
    pred_mask: Optional[torch.Tensor] = None

    scores = renamed_field("score", "scores")
    normalized_scores = renamed_field("normalized_score", "normalized_scores")
    labels = renamed_field("label", "labels")
    pred_masks = renamed_field("pred_mask", "pred_masks")
