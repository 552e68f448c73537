"""The output classes: named per-image fields, no aliases of old names."""

import pytest
import torch

from adpretrain_hf.modeling.outputs_adpretrain import ADPretrainOutput, AnomalyDetectionOutput


def test_fields_are_the_per_image_names_and_tuples_keep_only_set_fields():
    out = ADPretrainOutput(anomaly_map=torch.zeros(1, 4, 4), score=torch.ones(1))
    assert list(out.keys()) == ["anomaly_map", "score"] and len(out.to_tuple()) == 2
    detection = AnomalyDetectionOutput(score=torch.ones(2), label=torch.tensor([True, False]))
    assert list(detection.keys()) == ["score", "label"]


@pytest.mark.parametrize("old", ["scores", "normalized_scores", "labels", "pred_masks"])
def test_old_names_are_gone(old):
    with pytest.raises(AttributeError):
        getattr(AnomalyDetectionOutput(score=torch.ones(2)), old)
