"""The output classes' renamed fields: the old name warns and is the very same tensor."""

from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from transformers.utils import ModelOutput

from adpretrain_hf.modeling import modeling_detector_adpretrain
from adpretrain_hf.modeling.outputs_adpretrain import ADPretrainOutput, AnomalyDetectionOutput, renamed_field


@dataclass
class _Toy(ModelOutput):
    value: Optional[torch.Tensor] = None

    values = renamed_field("value", "values")


def test_renamed_field_warns_names_both_and_returns_the_same_object():
    toy = _Toy(value=torch.arange(3))
    with pytest.warns(FutureWarning, match=r"_Toy\.values is deprecated.*use \.value"):
        assert toy.values is toy.value
    with pytest.raises(AttributeError):  # read-only: the alias never shadows the field
        toy.values = torch.zeros(3)


def test_aliases_are_not_fields_so_tuples_and_keys_are_unchanged():
    out = ADPretrainOutput(anomaly_map=torch.zeros(1, 4, 4), score=torch.ones(1))
    assert list(out.keys()) == ["anomaly_map", "score"]
    assert len(out.to_tuple()) == 2
    detection = AnomalyDetectionOutput(score=torch.ones(2), label=torch.tensor([True, False]))
    assert "scores" not in detection.keys() and "labels" not in detection.keys()
    with pytest.warns(FutureWarning):
        assert detection.labels is detection.label


def test_detector_output_lives_here_and_keeps_its_old_import():
    assert modeling_detector_adpretrain.AnomalyDetectionOutput is AnomalyDetectionOutput
