"""adpretrain_hf.evaluation.config: the protocol settings' validation."""

import pytest

from adpretrain_hf.evaluation import EvaluationConfig


def test_invalid_protocol_settings(mvtec_root, model):
    with pytest.raises(ValueError, match="pass one of them"):
        EvaluationConfig(str(mvtec_root), train_shots=2, train_fraction=0.5).validate()
    with pytest.raises(ValueError, match="noise_ratio"):
        EvaluationConfig(str(mvtec_root), noise_ratio=1.5).validate()
    with pytest.raises(ValueError, match="reference_strategy"):
        EvaluationConfig(str(mvtec_root), reference_strategy="best").validate()


def test_kinds_has_one_name(tmp_path):
    from adpretrain_hf.evaluation import make_config

    assert make_config(str(tmp_path), kinds="backbone,residual").kinds == ("backbone", "residual")
    with pytest.raises(TypeError, match="unknown evaluation setting 'feature_kinds'"):  # no deprecated alias
        make_config(str(tmp_path), feature_kinds="backbone")
