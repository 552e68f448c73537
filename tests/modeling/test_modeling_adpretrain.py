"""ADPretrainModel forward, input errors, and Hub-style save/load (local, remote code, cache id)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from transformers import AutoModel, CLIPVisionConfig, CLIPVisionModel

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from tests.helpers import BLOCK_PACKAGE_SNIPPET


def _images(n, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_forward_outputs_and_featurenorm_map(tiny_clip_model):
    model = tiny_clip_model
    x, refs = _images(2), _images(3, seed=1)
    out = model(x, reference_pixel_values=refs)
    assert len(out.features) == len(out.residuals) == len(out.backbone_features) == 4
    assert all(f.shape == (2, 64, 32) for f in out.features)
    assert out.anomaly_map.shape == (2, 64, 64) and out.score.shape == (2,)
    # Independent FeatureNorm: per-layer norms, bilinear upsample, mean, scipy Gaussian, max.
    norms = [f.norm(dim=-1).reshape(2, 1, 8, 8) for f in out.features]
    mean = torch.stack([F.interpolate(n, size=(64, 64), mode="bilinear", align_corners=False) for n in norms]).mean(0)[:, 0]
    expected = np.stack([gaussian_filter(m.detach().double().numpy(), sigma=4, mode="reflect", truncate=4) for m in mean])
    assert np.allclose(out.anomaly_map.numpy(), expected, atol=1e-5)
    assert torch.allclose(out.score, out.anomaly_map.flatten(1).amax(1))
    assert "score" in out.keys() and "scores" not in out.keys()
    assert not hasattr(out, "scores")  # one name: no deprecated alias


def test_stored_bank_equals_per_call_references(tiny_clip_model):
    x, refs = _images(2), _images(3, seed=1)
    direct = tiny_clip_model(x, reference_pixel_values=refs)
    tiny_clip_model.set_references(refs)
    stored = tiny_clip_model(x)
    per_sample = tiny_clip_model(x, reference_pixel_values=refs.unsqueeze(0).expand(2, -1, -1, -1, -1))
    for a, b, c in zip(direct.features, stored.features, per_sample.features):
        assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-6)


def test_residual_ablation_feeds_raw_features():
    model = ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip", use_residual=False)).eval()
    out = model(_images(1))  # no references needed
    assert all(torch.equal(r, b) for r, b in zip(out.residuals, out.backbone_features))


@pytest.mark.parametrize(
    "pixels,match",
    [
        (torch.randn(1, 1, 64, 64), "channels"),
        (torch.randn(1, 3, 60, 60), "divisible by the backbone.s smallest stride 8"),
        (torch.randn(1, 3, 48, 48), "64x64"),
        (torch.randn(3, 64, 64), r"\[B, 3, H, W\]"),
    ],
)
def test_bad_pixel_values_are_clear_errors(tiny_clip_model, pixels, match):
    with pytest.raises(ValueError, match=match):
        tiny_clip_model(pixels, reference_pixel_values=_images(1))


def test_reference_pixels_are_checked_once_and_named_in_errors(tiny_clip_model, monkeypatch):
    refs = _images(2)
    refs[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"reference_pixel_values holds NaN/inf values in image #1"):
        tiny_clip_model.compute_reference_bank(refs)
    calls = []
    check = tiny_clip_model.check_pixel_values
    monkeypatch.setattr(tiny_clip_model, "check_pixel_values", lambda *args: calls.append(args[1:]) or check(*args))
    tiny_clip_model.compute_reference_bank(_images(2))
    assert calls == [("reference_pixel_values",)]


def test_missing_and_empty_references_are_clear_errors(tiny_clip_model):
    with pytest.raises(ValueError, match="set_references"):
        tiny_clip_model(_images(1))
    with pytest.raises(ValueError, match="empty"):
        tiny_clip_model.set_references(torch.empty(0, 3, 64, 64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        tiny_clip_model(np.zeros((1, 3, 64, 64)))


def test_round_trip_is_bit_identical(tiny_clip_model, tmp_path):
    x, refs = _images(2), _images(3, seed=1)
    tiny_clip_model.centers.set([torch.full((32,), 0.5)] * 4)
    before = tiny_clip_model(x, reference_pixel_values=refs)
    tiny_clip_model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_adpretrain.py"} <= files
    loaded = AutoModel.from_pretrained(tmp_path)  # registered at import: no trust_remote_code
    assert isinstance(loaded, ADPretrainModel)
    after = loaded.eval()(x, reference_pixel_values=refs)
    for a, b in zip(before.features + (before.anomaly_map,), after.features + (after.anomaly_map,)):
        assert torch.equal(a, b)
    assert torch.equal(loaded.centers.get()[0], torch.full((32,), 0.5)) and bool(loaded.centers.initialized)


def test_reference_bank_saved_only_when_asked(tiny_clip_model, tmp_path):
    refs = _images(2, seed=1)
    tiny_clip_model.set_references(refs)
    tiny_clip_model.save_pretrained(tmp_path / "plain")
    assert ADPretrainModel.from_pretrained(tmp_path / "plain").reference_bank is None
    tiny_clip_model.save_pretrained(tmp_path / "with_bank", save_references=True)
    loaded = ADPretrainModel.from_pretrained(tmp_path / "with_bank")
    assert all(torch.equal(a, b) for a, b in zip(loaded.reference_bank.layers, tiny_clip_model.reference_bank.layers, strict=True))


def test_remote_code_loads_without_the_package(tiny_clip_model, tmp_path):
    x, refs = _images(1), _images(2, seed=1)
    expected = tiny_clip_model(x, reference_pixel_values=refs).anomaly_map
    tiny_clip_model.save_pretrained(tmp_path / "ckpt")
    bundle = set(os.listdir(tmp_path / "ckpt"))  # the checkpoint plumbing travels under its name
    assert "checkpoint_io_adpretrain.py" in bundle and "hub_adpretrain.py" not in bundle
    torch.save({"x": x, "refs": refs}, tmp_path / "inputs.pt")
    script = BLOCK_PACKAGE_SNIPPET + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        try:
            import adpretrain_hf  # noqa: F401
            raise SystemExit("adpretrain_hf should not be importable here")
        except ModuleNotFoundError:
            pass
        model = AutoModel.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True).eval()
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        torch.save(model(inputs["x"], reference_pixel_values=inputs["refs"]).anomaly_map, {str(tmp_path / 'out.pt')!r})
        print(type(model).__module__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "transformers_modules" in result.stdout
    # Not bit-equal: another process (thread count) may round differently at the 1e-7 level.
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=1e-5, atol=1e-5)


def _fake_hub_cache(root, repo_id, folder_writer):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    folder_writer(repo_dir / "snapshots" / commit)
    return root


def test_load_by_hub_id_from_offline_cache(tiny_clip_model, tmp_path, monkeypatch):
    cache = _fake_hub_cache(tmp_path / "hub", "adpretrain/tiny-clip", tiny_clip_model.save_pretrained)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    loaded = AutoModel.from_pretrained("adpretrain/tiny-clip", cache_dir=str(cache))
    x, refs = _images(1), _images(2, seed=1)
    assert torch.equal(loaded(x, reference_pixel_values=refs).score, tiny_clip_model(x, reference_pixel_values=refs).score)


def test_unbundled_backbone_loads_from_backbone_id(tmp_path):
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=64, patch_size=8)
    torch.manual_seed(5)
    CLIPVisionModel(vision).save_pretrained(tmp_path / "backbone")
    config = ADPretrainConfig.from_preset("tiny-clip", bundle_backbone=False, backbone_id=str(tmp_path / "backbone"))
    model = ADPretrainModel(config)
    model.load_backbone_weights()
    model.save_pretrained(tmp_path / "ckpt")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as handle:
        assert not any(k.startswith("backbone.") for k in handle.keys())
    loaded = ADPretrainModel.from_pretrained(tmp_path / "ckpt")
    real = CLIPVisionModel.from_pretrained(tmp_path / "backbone").state_dict()
    assert all(torch.equal(loaded.backbone.model.state_dict()[k], v) for k, v in real.items())


def test_mismatched_checkpoint_names_the_layer(tiny_clip_model, tmp_path):
    tiny_clip_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_learnable_references"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"projector of tapped layer #0 \(backbone block 1\)"):
        ADPretrainModel.from_pretrained(tmp_path)


def test_fewer_layers_in_config_than_weights_is_an_error(tiny_clip_model, tmp_path):
    tiny_clip_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["layers"], config["feature_dims"] = [1, 2, 3, 4, 4], None
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lacks projector weights"):
        ADPretrainModel.from_pretrained(tmp_path)
