"""What a checkpoint was saved with is what it loads as: structural fields, stored bank, file integrity."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import pipeline

from adpretrain_hf import ADPretrainConfig, ADPretrainModel


def _images(n, seed):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def saved(tiny_clip_model, tmp_path):
    tiny_clip_model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    before = {key: config[key] for key in changes}
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return before


@pytest.mark.parametrize(
    "field,value",
    [
        ("projector_num_heads", 2),  # same tensor shapes: loaded silently and scored differently before
        ("layers", [4, 3, 2, 1]),  # same shapes, projectors applied to other blocks
        ("image_size", 32),  # failed only at the first forward before
        ("matching_metric", "l2"),
    ],
)
def test_config_that_differs_from_the_weights_is_refused_naming_field_and_values(saved, field, value):
    before = _edit_config(saved, **{field: value})
    expected = f"{field}: the config says {value!r} but the weights were saved with {before[field]!r}"
    with pytest.raises(ValueError) as info:
        ADPretrainModel.from_pretrained(saved)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_changed_backbone_family_fails_at_load_with_the_field(saved):
    _edit_config(saved, backbone_family="dinov2")
    with pytest.raises(ValueError, match=r"backbone_family: the config says 'dinov2' but the weights were saved with 'clip'"):
        ADPretrainModel.from_pretrained(saved)


def test_override_at_load_is_checked_like_the_file(saved):
    with pytest.raises(ValueError, match="projector_num_heads: the config says 2 but the weights were saved with 4"):
        ADPretrainModel.from_pretrained(saved, projector_num_heads=2)


def test_checkpoint_without_recorded_structure_still_loads(tiny_clip_model, saved):
    weights = saved / "model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt"})  # as written before this release
    loaded = ADPretrainModel.from_pretrained(saved)
    x, refs = _images(1, 0), _images(2, 1)
    assert torch.equal(loaded(x, reference_pixel_values=refs).score, tiny_clip_model(x, reference_pixel_values=refs).score)


@pytest.mark.parametrize("name", ["model.safetensors", "reference_bank.safetensors"])
def test_truncated_file_is_named(tiny_clip_model, tmp_path, name):
    tiny_clip_model.set_references(_images(2, 1))
    tiny_clip_model.save_pretrained(tmp_path, save_references=True)
    path = tmp_path / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{name}.*truncated or corrupt"):
        ADPretrainModel.from_pretrained(tmp_path)


def test_loaded_bank_is_kept_on_resave_and_the_pipeline_runs_on_it(tiny_clip_model, tmp_path):
    refs, x = _images(3, 1), _images(1, 0)
    tiny_clip_model.set_references(refs)
    tiny_clip_model.save_pretrained(tmp_path / "first", save_references=True)
    ADPretrainModel.from_pretrained(tmp_path / "first").save_pretrained(tmp_path / "second")  # default: keep
    reloaded = ADPretrainModel.from_pretrained(tmp_path / "second")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.reference_bank.layers, tiny_clip_model.reference_bank.layers, strict=True))
    # The pipeline on the re-saved folder uses that bank: same map as references passed explicitly.
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pipe = pipeline("anomaly-features", model=str(tmp_path / "second"), device="cpu")
    pixels = pipe.image_processor(image, return_tensors="pt")["pixel_values"]
    expected = tiny_clip_model(pixels, reference_pixel_values=refs).score
    assert pipe(image)["score"] == pytest.approx(float(expected), abs=1e-5)
    # Saying otherwise still drops it.
    reloaded.save_pretrained(tmp_path / "third", save_references=False)
    assert ADPretrainModel.from_pretrained(tmp_path / "third").reference_bank is None


def test_model_that_never_had_a_bank_is_saved_without_one(tmp_path):
    model = ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).eval()
    model.set_references(_images(1, 1))  # set in memory only: saved only when asked
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "reference_bank.safetensors").exists()


def test_changed_backbone_family_without_recorded_structure_fails_at_load(saved):
    weights = saved / "model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt"})
    _edit_config(saved, backbone_family="dinov2")
    with pytest.raises(ValueError, match=r"does not build a model.*backbone_family='dinov2' needs a backbone_config with model_type='dinov2'"):
        ADPretrainModel.from_pretrained(saved)


def test_structure_is_recorded_even_when_the_writer_hook_is_unavailable(tiny_clip_model, tmp_path, monkeypatch):
    import contextlib

    from safetensors import safe_open

    from adpretrain_hf.modeling import checkpoint_io_adpretrain

    monkeypatch.setattr(checkpoint_io_adpretrain, "structure_in_weight_files", lambda config: contextlib.nullcontext())
    tiny_clip_model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        recorded = json.loads(handle.metadata()["adpretrain_structure"])
    config = tiny_clip_model.config
    assert recorded == {"backbone_family": config.backbone_family, "image_size": config.image_size, "patch_size": config.patch_size,
                        "layers": config.layers, "feature_dims": config.feature_dims, "projector_type": config.projector_type,
                        "num_learnable_references": config.num_learnable_references,
                        "projector_num_heads": config.projector_num_heads, "mlp_ratio": config.mlp_ratio,
                        "use_se_gate": config.use_se_gate, "se_reduction": config.se_reduction,
                        "num_projector_blocks": config.num_projector_blocks, "use_residual": config.use_residual,
                        "matching_metric": config.matching_metric}
    loaded = ADPretrainModel.from_pretrained(tmp_path)  # the rewritten header still points at the same bytes
    state = tiny_clip_model.state_dict()
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
