"""Model identity in results.json: equal for a model and its saved folder, different for any other model."""

from __future__ import annotations

import warnings

import pytest
import torch

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.evaluation import evaluate_model
from adpretrain_hf.evaluation.identity import check_identity, config_sha256, model_identity, weights_sha256


def test_identity_survives_save_and_load_and_names_the_folder(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ADPretrainModel.from_pretrained(str(tmp_path / "ckpt"))
    in_memory, from_folder = model_identity(model), model_identity(loaded)
    assert in_memory["checkpoint"] is None and from_folder["checkpoint"] == str((tmp_path / "ckpt").resolve())
    assert (in_memory["config_sha256"], in_memory["weights_sha256"]) == (from_folder["config_sha256"], from_folder["weights_sha256"])
    check_identity(from_folder, in_memory, "results.json")  # same model: no error


def test_any_weight_or_config_change_changes_the_identity(model):
    config = ADPretrainConfig.from_preset("tiny-clip", hypersphere_radius=0.5)
    assert config_sha256(config) != config_sha256(model.config)
    other = ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip"))
    other.load_state_dict(model.state_dict())
    assert weights_sha256(other) == weights_sha256(model)
    with torch.no_grad():
        next(other.projectors.parameters()).view(-1)[0] += 1e-6
    assert weights_sha256(other) != weights_sha256(model)
    with pytest.raises(ValueError, match="another model \\(weights differ; it records an in-memory model\\)"):
        check_identity(model_identity(model), model_identity(other), "r.json")


def test_the_runner_records_the_identity_of_the_checkpoint_it_evaluated(model, mvtec_root, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        payload = evaluate_model(str(tmp_path / "ckpt"), mvtec_root, methods="featurenorm", categories="tile", num_overlays=0,
                                 progress=False, print_markdown=False, bootstrap_resamples=0)
    assert payload["model_identity"] == model_identity(ADPretrainModel.from_pretrained(str(tmp_path / "ckpt")), tmp_path / "ckpt")


def test_scalar_integer_buffers_are_hashed():
    """CNN backbones carry 0-d int64 buffers (BatchNorm's num_batches_tracked): the EfficientNet demo crashed on them."""
    torch.manual_seed(0)
    cnn = ADPretrainModel(ADPretrainConfig.from_preset("tiny-cnn"))
    assert any(t.dim() == 0 and not t.is_floating_point() for t in cnn.state_dict().values())
    digest = weights_sha256(cnn)
    for tensor in cnn.state_dict().values():
        if tensor.dim() == 0 and not tensor.is_floating_point():
            tensor += 1
            break
    assert weights_sha256(cnn) != digest
