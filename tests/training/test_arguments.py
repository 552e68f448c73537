"""Pretraining arguments: YAML, flags and key=value overrides merge; bad input is a one-line error."""

import pytest

from adpretrain_hf.training.arguments import PretrainArguments, load_arguments


def test_arguments_merge_yaml_flags_and_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("preset: tiny-clip\nepochs: 3\nlearning_rate: 1.0e-4\n")
    args = load_arguments(str(config), {"epochs": 5, "batch_size": None}, ["learning_rate=2e-3", "model.norm_kind=release", "model.layers=[1, 2]"])
    assert (args.preset, args.epochs, args.batch_size, args.learning_rate) == ("tiny-clip", 5, 32, 2e-3)
    assert args.model == {"norm_kind": "release", "layers": [1, 2]}
    with pytest.raises(ValueError, match="not a pretraining argument"):
        load_arguments(None, {}, ["nonsense=1"])
    config.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_arguments(str(config), {}, [])


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="data_root"):
        PretrainArguments().validate()
    with pytest.raises(ValueError, match="not a folder"):
        PretrainArguments(data_root=str(tmp_path / "nope")).validate()
