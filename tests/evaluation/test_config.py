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


def test_feature_kinds_is_the_deprecated_name_of_kinds(tmp_path):
    from adpretrain_hf.evaluation import make_config

    with pytest.warns(FutureWarning, match=r"feature_kinds= is deprecated.*pass kinds="):
        assert make_config(str(tmp_path), feature_kinds="backbone,residual").kinds == ("backbone", "residual")
    with pytest.raises(TypeError, match="both kinds= and feature_kinds="):  # before: feature_kinds silently won
        make_config(str(tmp_path), kinds="pretrained", feature_kinds="backbone")
