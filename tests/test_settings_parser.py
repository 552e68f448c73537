"""The CLIs are derived from their settings dataclasses (issue 14): every field is a flag with
help, ``--config`` files combine with flags (the flag wins), the CLI and the Python API build
equal configs, and unknown names fail with the closest known name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from adpretrain_hf.cli import main as cli_main
from adpretrain_hf.commands import evaluate as evaluate_command
from adpretrain_hf.evaluation import EvaluationConfig, evaluate_model, make_config
from adpretrain_hf.settings_values import typed_value
from adpretrain_hf.training import pretrain
from adpretrain_hf.training.arguments import PretrainArguments, apply_overrides, load_arguments

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "training" / "configs" / "tiny-clip.yaml"


def _actions_by_dest(parser):
    return {action.dest: action for action in parser._actions}


@pytest.mark.parametrize("cls, build", [(EvaluationConfig, evaluate_command.build_parser), (PretrainArguments, pretrain.build_parser)],
                         ids=["evaluate", "pretrain"])
def test_every_field_is_a_flag_with_help(cls, build):
    parser = build()
    actions = _actions_by_dest(parser)
    text = " ".join(parser.format_help().split())
    for field in dataclasses.fields(cls):
        assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"
        assert field.name in actions, f"{cls.__name__}.{field.name} is not a flag"
        assert f"--{field.name.replace('_', '-')}" in text or f"--{field.name}" in text
        assert " ".join(field.metadata["help"].split())[:40] in text


def test_parser_defaults_are_the_dataclass_defaults(tmp_path):
    parsed = evaluate_command.build_parser().parse_args(["--preset", "tiny-clip", "--data", str(tmp_path)])
    assert evaluate_command.config_from_args(parsed) == EvaluationConfig(data_root=str(tmp_path))
    parsed = pretrain.build_parser().parse_args([])
    assert PretrainArguments(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(PretrainArguments)}) == PretrainArguments()


def test_existing_flag_names_and_comma_lists_still_work(tmp_path):
    argv = ["--model", "some/id", "--data", str(tmp_path), "--methods", "patchcore, PaDiM", "--categories", "tile,wood",
            "--kinds", "residual,backbone", "--output", str(tmp_path / "o"), "--no-progress", "--no-feature-cache",
            "--no-compare-backbone", "--quick", "--reference-seeds", "3", "--dtype", "bfloat16", "--feature-cache-mb", "0.5"]
    config = evaluate_command.config_from_args(evaluate_command.build_parser().parse_args(argv))
    assert config.methods == ("patchcore", "padim") and config.categories == ("tile", "wood")
    assert config.kinds == ("backbone", "residual")  # FEATURE_KINDS order
    assert config.output_dir == str(tmp_path / "o") and config.reference_seeds == 3 and config.feature_cache_mb == 0.5
    assert (config.progress, config.feature_cache, config.compare_backbone, config.quick) == (False, False, False, True)
    assert config.dtype == "bfloat16"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_settings_file_and_a_flag_combine_and_the_flag_wins(tmp_path, suffix):
    settings = {"data_root": str(tmp_path), "shots": 3, "methods": ["padim"], "layout": "mvtec", "noise_ratio": 0.1}
    path = tmp_path / f"eval{suffix}"
    path.write_text(json.dumps(settings))  # JSON is also YAML
    parsed = evaluate_command.build_parser().parse_args(["--preset", "tiny-clip", "--config", str(path), "--shots", "5"])
    config = evaluate_command.config_from_args(parsed)
    assert config == EvaluationConfig(**{**settings, "shots": 5})


def test_pretrain_recipe_and_flags_combine(tmp_path):
    import yaml

    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    parsed = pretrain.build_parser().parse_args(["--config", str(TINY_RECIPE), "--epochs", "5", "--set", "model.layers=6,12"])
    values = apply_overrides({f.name: getattr(parsed, f.name) for f in dataclasses.fields(PretrainArguments)}, parsed.set)
    assert values["epochs"] == 5 != recipe["epochs"]
    assert (values["batch_size"], values["learning_rate"], values["preset"]) == (recipe["batch_size"], float(recipe["learning_rate"]), recipe["preset"])
    assert values["model"] == {"layers": [6, 12]}
    # the function benchmarks and tests call reads the same file the same way
    assert PretrainArguments(**values) == load_arguments(str(TINY_RECIPE), {"epochs": 5}, ["model.layers=[6, 12]"])


def test_cli_and_evaluate_model_build_equal_configs(tmp_path, monkeypatch):
    import adpretrain_hf.evaluation as evaluation
    from adpretrain_hf.evaluation import runner

    seen = []
    monkeypatch.setattr(evaluation, "run_evaluation", lambda model, config, **kwargs: seen.append(config))
    monkeypatch.setattr(runner, "run_evaluation", lambda model, config, hook=None: seen.append(config))
    same = {"layout": "mvtec", "categories": "tile", "methods": "featurenorm,padim", "shots": 2, "train_shots": 4,
            "reference_strategy": "kmeans", "kinds": "backbone,residual,pretrained", "num_overlays": 1}
    flags = [arg for name, value in same.items() for arg in (f"--{name.replace('_', '-')}", str(value))]
    assert cli_main(["evaluate", "--preset", "tiny-clip", "--data", str(tmp_path), "--no-progress", *flags]) == 0
    evaluate_model(None, str(tmp_path), progress=False, **same)
    from_cli, from_api = seen
    assert "argv" in from_cli.extra
    assert dataclasses.replace(from_cli, extra={}) == from_api
    assert from_api.kinds == ("backbone", "residual", "pretrained") and from_api.train_shots == 4


def test_unknown_names_fail_with_the_closest_name(tmp_path, capsys):
    with pytest.raises(TypeError, match="'methds'.*did you mean 'methods'"):
        evaluate_model(None, str(tmp_path), methds="padim")
    with pytest.raises(TypeError, match="no data_root"):
        make_config(shots=2)
    assert make_config(make_config(str(tmp_path)), shots=2).shots == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data_root: {tmp_path}\nshot: 3\n")
    with pytest.raises(SystemExit) as info:
        cli_main(["evaluate", "--preset", "tiny-clip", "--config", str(bad)])
    assert info.value.code == 2 and "did you mean 'shots'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="'layerz' is not an ADPretrainConfig field: did you mean 'layers'"):
        apply_overrides({}, ["model.layerz=[1]"])
    with pytest.raises(ValueError, match="learning_rat: not a pretraining argument.*'learning_rate'"):
        apply_overrides({}, ["learning_rat=1e-3"])
    with pytest.raises(ValueError, match="model.use_se_gate=maybe: expected true or false"):
        apply_overrides({}, ["model.use_se_gate=maybe"])
    with pytest.raises(ValueError, match="model.image_size=big: expected an int"):
        apply_overrides({}, ["model.image_size=big"])


def test_set_values_take_the_model_fields_types():
    values = apply_overrides({"model": {"norm_kind": "paper"}}, [
        "model.hypersphere_radius=1", "model.hinge_normals=false", "model.training_reference_shots=[1, 4]",
        "model.backbone_id=null", "model.projector_type=123", "lr_milestones=3,5", "center_momentum=none"])
    assert values["model"] == {"norm_kind": "paper", "hypersphere_radius": 1.0, "hinge_normals": False,
                               "training_reference_shots": [1, 4], "backbone_id": None, "projector_type": "123"}
    assert isinstance(values["model"]["hypersphere_radius"], float)
    assert values["lr_milestones"] == [3, 5] and values["center_momentum"] is None
    assert typed_value("1e-4", float) == float("1e-4") and typed_value("a, b", tuple[str, ...]) == ("a", "b")
