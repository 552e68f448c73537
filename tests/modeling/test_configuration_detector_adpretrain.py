"""The detector config: values survive a save, old folders' keys are read, bad choices explained."""

import json

import pytest

from adpretrain_hf import ADPretrainConfig
from adpretrain_hf.modeling.configuration_detector_adpretrain import ADPretrainDetectorConfig


def test_save_and_load_keep_every_value(tmp_path):
    config = ADPretrainDetectorConfig(
        method="PatchCore", method_settings={"num_neighbors": 3}, feature_kind="backbone", layer_positions=(0, "2"),
        feature_source=tmp_path, fitted_shapes={"memory_bank": (10, "8")}, fitted_dtypes={"memory_bank": "float16"},
        image_threshold=1, pixel_threshold="0.5", score_min=0, score_max=2, calibration="f1",
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    again = ADPretrainDetectorConfig.from_pretrained(tmp_path)
    expected = {"method": "patchcore", "method_settings": {"num_neighbors": 3}, "feature_kind": "backbone",
                "layer_positions": [0, 2], "feature_source": str(tmp_path), "fitted_shapes": {"memory_bank": [10, 8]},
                "fitted_dtypes": {"memory_bank": "float16"}, "image_threshold": 1.0, "pixel_threshold": 0.5,
                "score_min": 0.0, "score_max": 2.0, "calibration": "f1"}
    for key, value in expected.items():
        assert saved[key] == value and getattr(again, key) == value, key
    assert type(again.image_threshold) is float and again.is_calibrated
    assert not ADPretrainDetectorConfig().is_calibrated


def test_the_method_is_always_written_and_never_defaults():
    """A config without a method must not load as some default detector (issue 23)."""
    assert ADPretrainDetectorConfig().method is None
    assert json.loads(ADPretrainDetectorConfig(method="patchcore").to_json_string(use_diff=True))["method"] == "patchcore"
    assert json.loads(ADPretrainDetectorConfig(method="featurenorm").to_json_string(use_diff=True))["method"] == "featurenorm"


def test_nested_config_is_self_contained_and_clean():
    nested = ADPretrainConfig.from_preset("tiny-clip", bundle_backbone=False)
    nested.architectures = ["ADPretrainModel"]
    config = ADPretrainDetectorConfig(adpretrain_config=nested)
    assert "architectures" not in config.adpretrain_config and "transformers_version" not in config.adpretrain_config
    rebuilt = config.nested_adpretrain_config()
    assert rebuilt.bundle_backbone is True  # a detector folder always carries its backbone
    assert rebuilt.layers == nested.layers and rebuilt.backbone_config == nested.backbone_config


@pytest.mark.parametrize(
    "kwargs, message",
    [({"feature_kind": "raw"}, r"feature_kind='raw' is not supported: choose one of \('backbone', 'pretrained'\)")],
)
def test_unknown_choices_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ADPretrainDetectorConfig(**kwargs)
