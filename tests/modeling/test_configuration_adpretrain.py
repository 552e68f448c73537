"""ADPretrainConfig defaults, validation and packaging (the presets: test_presets_adpretrain.py)."""

import importlib.util
import subprocess
import sys

import pytest

from adpretrain_hf import ADPretrainConfig, ADPretrainModel

PAPER_DEFAULTS = {  # section 4.1, appendix D/E of the paper
    "projector_type": "lkv",
    "num_learnable_references": 2048,
    "projector_num_heads": 16,
    "mlp_ratio": 4,
    "use_se_gate": True,
    "num_projector_blocks": 1,
    "use_residual": True,
    "matching_metric": "cosine",
    "num_reference_shots": 8,
    "training_reference_shots": [1, 4, 8],
    "angle_temperature": 0.15,
    "hypersphere_radius": 0.4,
    "abnormal_margin": 0.75,
    "loss_weight": 1.0,
    "image_size": 224,
    "anomaly_map_sigma": 4.0,
}
RELEASE_LOSS_FORM_DEFAULTS = {  # the paper's form overflows on real features: docs/loss_curves/README.md
    "norm_kind": "release",
    "angle_anchors": "both",
    "loss_normalization": "release",
    "detach_exp_factor": True,
    "adaptive_radius": True,
    "hinge_normals": True,
    "push_inner_normals": True,
    "center_mode": "residual",
}


def test_config_defaults_are_the_papers_numbers_and_the_releases_loss_form():
    config = ADPretrainConfig()
    for field, value in {**PAPER_DEFAULTS, **RELEASE_LOSS_FORM_DEFAULTS}.items():
        assert getattr(config, field) == value, field
    assert config.patch_anomaly_fraction == pytest.approx(32 / 256)


def test_config_round_trips_through_dict(tmp_path):
    config = ADPretrainConfig.from_preset("clip-large", loss_weight=2.0)
    config.save_pretrained(tmp_path)
    again = ADPretrainConfig.from_pretrained(tmp_path)
    assert again.to_dict() == config.to_dict()
    assert again.layers == [6, 12, 18, 24]


@pytest.mark.parametrize(
    "field,value", [("projector_type", "conv"), ("matching_metric", "dot"), ("norm_kind", "huber"), ("angle_anchors", "all")]
)
def test_config_rejects_unknown_choices(field, value):
    with pytest.raises(ValueError, match=field):
        ADPretrainConfig(**{field: value})


@pytest.mark.parametrize(
    "use_residual,projector_type,expected",
    [(True, "lkv", True), (False, "cross_attn", True), (False, "lkv", False), (False, "mlp", False)],
)
def test_needs_references_is_residual_matching_or_cross_attention(use_residual, projector_type, expected):
    config = ADPretrainConfig(use_residual=use_residual, projector_type=projector_type)
    assert config.needs_references is expected


def test_layers_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="out of range"):
        ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip", layers=[2, 5]))
    with pytest.raises(ValueError, match="1-indexed"):
        ADPretrainConfig.from_preset("tiny-clip", layers=[0, 2])


def test_only_one_import_name_is_installed(tmp_path):
    # The design card's modeling/ and training/ folders live under adpretrain_hf.
    code = (
        "import importlib.util as u; "
        "print(u.find_spec('modeling') is None, u.find_spec('training') is None, "
        "u.find_spec('adpretrain_hf.modeling') is not None, u.find_spec('adpretrain_hf.training') is not None)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "True"]


def test_console_script_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "adpretrain_hf.cli", "--help"], capture_output=True, text=True, check=True)
    assert "usage: adpretrain" in out.stdout
    assert importlib.util.find_spec("adpretrain_hf.cli") is not None
