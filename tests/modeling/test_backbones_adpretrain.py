"""Backbone adapters: one interface, the right tokens, frozen by construction."""

import math

import numpy as np
import pytest
import torch

from adpretrain_hf import ADPretrainConfig, ADPretrainModel


def _hooked_block_outputs(blocks, layers, run):
    """Independent tap: forward hooks on the tapped blocks (1-indexed)."""
    captured = {}
    handles = [
        blocks[layer - 1].register_forward_hook(
            lambda module, args, out, layer=layer: captured.__setitem__(layer, out[0] if isinstance(out, tuple) else out)
        )
        for layer in layers
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return [captured[layer] for layer in layers]


@pytest.mark.parametrize("preset", ["tiny-clip", "tiny-dinov2", "tiny-openclip"])
def test_adapter_returns_patch_tokens_of_the_tapped_blocks(preset):
    torch.manual_seed(0)
    config = ADPretrainConfig.from_preset(preset, layers=[1, 3])
    model = ADPretrainModel(config).eval()
    x = torch.randn(2, 3, config.image_size, config.image_size)
    tokens = model.backbone(x)
    side = config.image_size // config.patch_size
    assert [t.shape for t in tokens] == [torch.Size([2, side * side, model.backbone.feature_dims[0]])] * 2

    inner = model.backbone.model
    if preset == "tiny-openclip":
        blocks = inner.transformer.resblocks
        expected = _hooked_block_outputs(blocks, [1, 3], lambda: inner(x))
    else:
        blocks = inner.encoder.layers if preset == "tiny-clip" else inner.encoder.layer
        expected = _hooked_block_outputs(blocks, [1, 3], lambda: inner(pixel_values=x))
    for got, ref in zip(tokens, expected):
        assert torch.allclose(got, ref[:, 1:], atol=1e-6)  # CLS (token 0) dropped


def test_backbone_is_frozen_and_stays_in_eval(tiny_clip_model):
    model = tiny_clip_model
    model.train()
    assert model.projectors.training
    assert not model.backbone.training
    assert all(not m.training for m in model.backbone.modules())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert backbone_ids.isdisjoint(id(p) for p in model.trainable_parameters())


def test_gradients_reach_projectors_only(tiny_clip_model):
    model = tiny_clip_model.train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x, reference_pixel_values=torch.randn(2, 3, 64, 64), output_anomaly_map=False)
    sum(f.square().mean() for f in out.features).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.trainable_parameters())


def test_timm_cnn_adapter_keeps_per_layer_grids():
    config = ADPretrainConfig(
        backbone_family="timm",
        backbone_config={"model_name": "resnet18"},
        layers=[2, 3, 4],  # timm feature_info entries, 1-indexed: 1 is the stem, 2..4 are layer1..layer3
        image_size=64,
        patch_size=4,
        num_learnable_references=16,
        projector_num_heads=4,
    )
    model = ADPretrainModel(config).eval()
    assert model.backbone.feature_dims == [64, 128, 256]
    assert model.grid_sizes == [(16, 16), (8, 8), (4, 4)]
    x = torch.randn(2, 3, 64, 64)
    out = model(x, reference_pixel_values=torch.randn(2, 3, 64, 64))
    assert [f.shape for f in out.features] == [(2, 256, 64), (2, 64, 128), (2, 16, 256)]
    assert out.anomaly_map.shape == (2, 64, 64)


@pytest.mark.parametrize("preset", ["tiny-clip", "tiny-dinov2", "tiny-openclip", "tiny-cnn"])
def test_every_adapter_has_its_smallest_stride(preset):
    """``smallest_stride`` = pixels per token of the finest tapped grid, measured here from the
    adapter's own output; only ViTs also have a ``patch_size`` (a CNN has no patches)."""
    torch.manual_seed(0)
    config = ADPretrainConfig.from_preset(preset)
    backbone = ADPretrainModel(config).eval().backbone
    side = config.image_size
    tokens = backbone(torch.randn(1, 3, side, side))
    finest = max(t.shape[1] for t in tokens)  # most tokens = finest (square) grid
    assert backbone.smallest_stride == side // math.isqrt(finest)
    if preset == "tiny-cnn":
        assert not hasattr(backbone, "patch_size") and backbone.smallest_stride == 4  # ResNet layer1: stride 4
    else:
        assert backbone.patch_size == backbone.smallest_stride == config.patch_size


def test_callers_read_the_adapters_stride_not_the_config(tmp_path):
    """A CNN config whose ``patch_size`` says 32: the model and the pipeline still use the adapter's 4."""
    from transformers import pipeline

    torch.manual_seed(0)
    model = ADPretrainModel(ADPretrainConfig.from_preset("tiny-cnn", patch_size=32)).eval()
    with pytest.raises(ValueError, match="smallest stride 4"):
        model(torch.randn(1, 3, 62, 62), reference_pixel_values=torch.randn(1, 3, 64, 64))
    refs = [np.full((64, 64, 3), 100, np.uint8)]
    pipe = pipeline("anomaly-features", model=model, device="cpu", references=refs)
    assert pipe._smallest_stride() == 4
    small = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)  # < 32, >= 4 pixels
    assert np.isfinite(pipe(small, output="score")["score"])
    with pytest.raises(ValueError, match="smallest stride: 4x4"):
        pipe(np.zeros((3, 3, 3), np.uint8))
