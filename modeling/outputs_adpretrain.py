"""Output classes of the feature model and the detector folder (named fields, per-image names:
``score``, ``label``, ``pred_mask``). A module of its own so the model modules stay about their
computation. Part of the remote-code bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from transformers.utils import ModelOutput


@dataclass
class ADPretrainOutput(ModelOutput):
    """Outputs of :class:`ADPretrainModel` (shapes: the docstring of ``modeling_adpretrain``)."""

    features: Optional[tuple] = None
    residuals: Optional[tuple] = None
    backbone_features: Optional[tuple] = None
    anomaly_map: Optional[torch.Tensor] = None
    score: Optional[torch.Tensor] = None
    grid_sizes: Optional[tuple] = None


@dataclass
class AnomalyDetectionOutput(ModelOutput):
    """Outputs of ``ADPretrainDetectorModel`` (shapes: the docstring of ``modeling_detector_adpretrain``)."""

    anomaly_map: Optional[torch.Tensor] = None
    score: Optional[torch.Tensor] = None
    normalized_score: Optional[torch.Tensor] = None
    label: Optional[torch.Tensor] = None
    pred_mask: Optional[torch.Tensor] = None
