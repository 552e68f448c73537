"""Every loss option is an ADPretrainConfig field of the same name (LossOptions' fields), built
into the loss in one place, and the paper / release recipes (training/configs/{paper,release}.yaml) run."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from adpretrain_hf import ADPretrainConfig
from adpretrain_hf.losses import PAPER_LOSS_FORM, RELEASE_LOSS_FORM, ADPretrainLoss, LossOptions
from adpretrain_hf.training.arguments import load_arguments

REPO = Path(__file__).resolve().parents[2]
LOSS_FIELDS = (  # written out here: config.json keys that saved models and the recipe YAMLs use
    "angle_temperature", "hypersphere_radius", "abnormal_margin", "loss_weight", "norm_loss_weight", "norm_kind",
    "angle_anchors", "loss_normalization", "detach_exp_factor", "adaptive_radius", "hinge_normals",
    "push_inner_normals", "norm_loss_reduction",
)


def test_every_loss_option_is_a_config_field_of_the_same_name(tmp_path):
    assert LossOptions.names() == LOSS_FIELDS
    config = ADPretrainConfig()
    assert config.loss_options() == LossOptions()
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {field: saved[field] for field in LOSS_FIELDS} == asdict(LossOptions())
    assert type(ADPretrainConfig(loss_weight=2).to_dict()["loss_weight"]) is int  # as written: results' config hash stays


@pytest.mark.parametrize("form,numbers", [(PAPER_LOSS_FORM, (0.3, 0.7, 0.2, 2.5, 0.25)), (RELEASE_LOSS_FORM, (0.05, 0.2, 1.5, 0.5, 3.0))])
def test_from_config_reaches_every_option(form, numbers):
    values = dict(zip(LOSS_FIELDS[:5], numbers))
    values.update({k: v for k, v in form.items() if k in LOSS_FIELDS})
    loss = ADPretrainLoss.from_config(ADPretrainConfig(**values), max_block_elements=1234)
    assert asdict(loss.options) == {**asdict(LossOptions()), **values}
    assert loss.max_block_elements == 1234


def test_from_config_reads_the_config_as_it_is_now():
    config = ADPretrainConfig()
    config.hypersphere_radius = 0.3
    assert ADPretrainLoss.from_config(config).options.hypersphere_radius == 0.3
    config.norm_kind = "huber"
    with pytest.raises(ValueError, match="norm_kind='huber'"):
        ADPretrainLoss.from_config(config)


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
    assert trainer.loss_fn.options == trainer.config.loss_options()
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
    assert loss.options.detach_exp_factor and loss.options.hinge_normals and loss.options.loss_normalization == "release"
