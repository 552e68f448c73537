"""Every loss option is an ADPretrainConfig field, built into the loss in one place, and the
paper / release recipes (training/configs/{paper,release}.yaml) run."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest

from adpretrain_hf import ADPretrainConfig
from adpretrain_hf.losses import ADPretrainLoss, PAPER_LOSS_FORM, RELEASE_LOSS_FORM
from adpretrain_hf.training.arguments import load_arguments

REPO = Path(__file__).resolve().parents[2]
RUNTIME_OPTIONS = {"chunk_size", "max_block_elements"}  # memory controls, not part of the recipe
CONFIG_TO_LOSS = {  # written out here, independently of LOSS_ARGUMENT_NAMES
    "angle_temperature": "temperature", "hypersphere_radius": "radius", "abnormal_margin": "margin",
    "loss_weight": "loss_weight", "norm_loss_weight": "norm_loss_weight", "norm_kind": "norm_kind", "angle_anchors": "anchors",
    "loss_normalization": "normalization", "detach_exp_factor": "detach_exp_factor",
    "adaptive_radius": "adaptive_radius", "hinge_normals": "hinge_normals", "push_inner_normals": "push_inner_normals",
    "norm_loss_reduction": "norm_reduction",
}


def _loss_parameters() -> dict[str, inspect.Parameter]:
    params = inspect.signature(ADPretrainLoss.__init__).parameters
    return {name: p for name, p in params.items() if name != "self" and name not in RUNTIME_OPTIONS}


def test_every_loss_option_is_a_documented_config_field():
    assert set(CONFIG_TO_LOSS.values()) == set(_loss_parameters())
    doc = ADPretrainConfig.__doc__
    for field in CONFIG_TO_LOSS:
        assert hasattr(ADPretrainConfig(), field), field
        assert f"        {field}:" in doc, f"{field} lacks a docstring line"


def test_config_and_loss_defaults_are_the_same():
    config = ADPretrainConfig()
    for field, argument in CONFIG_TO_LOSS.items():
        assert _loss_parameters()[argument].default == getattr(config, field), field


@pytest.mark.parametrize("form,numbers", [(PAPER_LOSS_FORM, (0.3, 0.7, 0.2, 2.5, 0.25)), (RELEASE_LOSS_FORM, (0.05, 0.2, 1.5, 0.5, 3.0))])
def test_from_config_reaches_every_option(form, numbers):
    values = dict(zip(("angle_temperature", "hypersphere_radius", "abnormal_margin", "loss_weight", "norm_loss_weight"), numbers))
    values.update({k: v for k, v in form.items() if k in CONFIG_TO_LOSS})
    loss = ADPretrainLoss.from_config(ADPretrainConfig(**values), max_block_elements=1234)
    for field, argument in CONFIG_TO_LOSS.items():
        assert getattr(loss, argument) == values[field], field
    assert loss.max_block_elements == 1234


def test_from_config_rejects_a_non_config():
    with pytest.raises(ValueError, match="loss fields"):
        ADPretrainLoss.from_config(object())


@pytest.mark.parametrize("recipe,form", [("paper", PAPER_LOSS_FORM), ("release", RELEASE_LOSS_FORM)])
def test_recipe_yaml_runs_on_the_tiny_preset(realiad_root, tmp_path, recipe, form):
    from adpretrain_hf.training.loop import Pretrainer

    args = load_arguments(
        str(REPO / "training" / "configs" / f"{recipe}.yaml"),
        {"preset": "tiny-clip", "data_root": str(realiad_root), "output_dir": str(tmp_path / "run"),
         "max_steps": 3, "batch_size": 4, "num_workers": 0},
        ["backbone_weights=null", "progress=false", "model.training_reference_shots=[1]"],
    )
    for field, value in form.items():
        assert args.model[field] == value, field
    trainer = Pretrainer(args)
    for field, argument in CONFIG_TO_LOSS.items():
        assert getattr(trainer.loss_fn, argument) == getattr(trainer.config, field)
    assert trainer.config.center_mode == form["center_mode"]
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(math.isfinite(r["loss"]) for r in records)


def test_set_override_reaches_the_loss(realiad_root, tmp_path):
    from adpretrain_hf.training.loop import Pretrainer

    args = load_arguments(
        str(REPO / "training" / "configs" / "tiny-clip.yaml"),
        {"data_root": str(realiad_root), "output_dir": str(tmp_path / "run")},
        ["model.detach_exp_factor=true", "model.loss_normalization=release", "model.hinge_normals=true"],
    )
    loss = Pretrainer(args).loss_fn
    assert loss.detach_exp_factor and loss.hinge_normals and loss.normalization == "release"
