"""Named presets: the real backbones' shapes (built on the meta device), the tiny ones tiny."""

import pytest
import torch

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.modeling.presets_adpretrain import PRESETS


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
