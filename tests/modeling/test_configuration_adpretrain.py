"""ADPretrainConfig defaults, validation, presets and packaging."""

import importlib.util
import subprocess
import sys

import pytest
import torch

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.modeling.presets_adpretrain import PRESETS

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


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError) as info:
        ADPretrainConfig.from_preset("clip-huge")
    for name in ("clip-base", "clip-large", "dinov2-base", "dinov2-large", "imagebind", "tiny-clip"):
        assert name in str(info.value)


@pytest.mark.parametrize(
    "name,layers,width,grid",
    [
        ("clip-base", [3, 6, 9, 12], 768, 14),
        ("clip-large", [6, 12, 18, 24], 1024, 16),
        ("dinov2-base", [3, 6, 9, 12], 768, 16),
        ("dinov2-large", [6, 12, 18, 24], 1024, 16),
        ("imagebind", [8, 16, 24, 32], 1280, 16),
    ],
)
def test_real_presets_build_the_real_shape_without_memory(name, layers, width, grid):
    config = ADPretrainConfig.from_preset(name)
    with torch.device("meta"):  # the real architecture, no allocation, no network
        model = ADPretrainModel(config)
    assert config.layers == layers
    assert model.backbone.feature_dims == [width] * 4
    assert model.grid_sizes == [(grid, grid)] * 4
    assert all(p.kind == "lkv" for p in model.projectors)


def test_every_preset_has_a_known_family():
    from adpretrain_hf.modeling.backbones_adpretrain import BACKBONE_ADAPTERS

    assert {p.family for p in PRESETS.values()} <= set(BACKBONE_ADAPTERS)


def test_tiny_presets_are_tiny():
    for name in ("tiny-clip", "tiny-dinov2", "tiny-openclip"):
        config = ADPretrainConfig.from_preset(name)
        cfg = config.backbone_config
        assert config.image_size <= 64
        assert cfg.get("hidden_size", cfg.get("width")) <= 64
        assert cfg.get("num_hidden_layers", cfg.get("layers")) <= 4


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
