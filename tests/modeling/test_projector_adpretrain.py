"""Projector initialisation follows PyTorch's defaults and the release's own changes, not transformers' N(0, 0.02)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adpretrain_hf import ADPretrainConfig, ADPretrainModel

TRANSFORMERS_STD = 0.02


def _uniform_std(fan_in: int) -> float:
    """Std of U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's nn.Linear weight and bias."""
    return 1.0 / math.sqrt(fan_in) / math.sqrt(3.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip"))


def test_linear_layers_keep_pytorchs_default_bounds(model):
    linears = [(n, m) for n, m in model.projectors.named_modules() if isinstance(m, nn.Linear)]
    assert linears
    weights = {}
    for name, linear in linears:
        bound = 1.0 / math.sqrt(linear.in_features)
        if name.endswith("learnable.proj"):  # projector_init="release": Kaiming normal (tested below)
            continue
        assert linear.weight.abs().max() <= bound + 1e-7, name
        weights.setdefault(linear.in_features, []).append(linear.weight.detach().flatten())
        if not name.endswith("attn.out_proj"):
            assert linear.bias.abs().max() <= bound + 1e-7 and linear.bias.abs().max() > 0, name
    for fan_in, values in weights.items():
        std = float(torch.cat(values).std())
        assert abs(std - _uniform_std(fan_in)) < 0.1 * _uniform_std(fan_in), (fan_in, std)
        assert abs(std - TRANSFORMERS_STD) > 0.01


def test_attention_and_references_follow_nn_multiheadattention(model):
    block = model.projectors[0].blocks[0]
    assert float(block.attn.in_proj_bias.detach().abs().max()) == 0.0 and float(block.attn.out_proj.bias.detach().abs().max()) == 0.0
    w = block.attn.in_proj_weight
    xavier_bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    w = w.detach()
    assert w.abs().max() <= xavier_bound + 1e-7 and float(w.std()) > 0.8 * xavier_bound / math.sqrt(3.0)
    refs = torch.cat([p.learnable.references.detach().flatten() for p in model.projectors])
    assert abs(float(refs.std()) - 1.0) < 0.1 and abs(float(refs.mean())) < 0.1


def test_from_pretrained_keeps_every_saved_weight(model, tmp_path):
    """Loading must not re-run the init over loaded weights (transformers inits missing ones only)."""
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    for name in saved:
        if name.startswith("projectors.") and saved[name].is_floating_point():
            saved[name] = torch.full_like(saved[name], 0.5)  # a value no init produces
    save_file(saved, tmp_path / "model.safetensors", metadata={"format": "pt"})
    state = ADPretrainModel.from_pretrained(tmp_path).state_dict()
    assert any(name.startswith("projectors.") for name in saved)
    for name, value in saved.items():
        torch.testing.assert_close(state[name], value, msg=name)


def _excess_kurtosis(values: torch.Tensor) -> float:
    """0 for a normal distribution, -1.2 for a uniform one: tells the two inits apart by shape, not only scale."""
    centred = values.double() - values.double().mean()
    return float((centred**4).mean() / (centred**2).mean() ** 2 - 3.0)


def _release_init_stats(init: str, standalone: bool):
    """Reference-projection weights and out_proj biases of the tiny-release preset's 4 projectors (D = 64)."""
    from adpretrain_hf.modeling.projector_adpretrain import FeatureProjector

    torch.manual_seed(0)
    config = ADPretrainConfig.from_preset("tiny-release", projector_init=init)
    if standalone:
        projectors = [FeatureProjector(64, config) for _ in range(4)]
    else:
        projectors = list(ADPretrainModel(config).projectors)
    weights = torch.cat([p.learnable.proj.weight.detach().flatten() for p in projectors])
    biases = torch.cat([p.blocks[0].attn.out_proj.bias.detach().flatten() for p in projectors])
    in_biases = torch.cat([p.blocks[0].attn.in_proj_bias.detach().flatten() for p in projectors])
    return weights, biases, in_biases


@pytest.mark.parametrize("standalone", [False, True], ids=["model_post_init", "feature_projector"])
def test_release_init_is_kaiming_normal_with_zero_attention_biases(standalone):
    """Release (models/projector.py): ProjectEmbedding's Conv1d k=1 gets kaiming_normal_(fan_in, leaky_relu);
    torch's gain for leaky_relu with its default slope a = 0 is sqrt(2 / (1 + a^2)) = sqrt(2), so the
    weights are N(0, 2 / fan_in); nn.MultiheadAttention zeroes in_proj_bias and out_proj.bias."""
    fan_in = 64
    weights, biases, in_biases = _release_init_stats("release", standalone)
    expected_std = math.sqrt(2.0 / (1.0 + 0.0**2)) / math.sqrt(fan_in)
    assert abs(float(weights.std()) - expected_std) < 0.03 * expected_std
    assert abs(float(weights.mean())) < 0.05 * expected_std
    assert abs(_excess_kurtosis(weights)) < 0.2  # normal, not uniform (-1.2); 16384 samples, s.e. ~0.04
    assert float(weights.abs().max()) > 1.0 / math.sqrt(fan_in)  # beyond nn.Linear's uniform bound
    assert float(biases.abs().max()) == 0.0 and float(in_biases.abs().max()) == 0.0


@pytest.mark.parametrize("standalone", [False, True], ids=["model_post_init", "feature_projector"])
def test_torch_init_keeps_nn_linear_defaults(standalone):
    """projector_init="torch": the same tensors keep nn.Linear's U(+-1/sqrt(fan_in)) (std 1/sqrt(3 fan_in))."""
    fan_in = 64
    weights, biases, in_biases = _release_init_stats("torch", standalone)
    bound = 1.0 / math.sqrt(fan_in)
    assert float(weights.abs().max()) <= bound + 1e-7
    assert abs(float(weights.std()) - bound / math.sqrt(3.0)) < 0.03 * bound / math.sqrt(3.0)
    assert abs(_excess_kurtosis(weights) + 1.2) < 0.1
    assert 0.5 * bound < float(biases.abs().max()) <= bound + 1e-7
    assert float(in_biases.abs().max()) == 0.0  # no nn.Linear there: zero in both


def test_projector_init_is_a_checked_config_field(tmp_path):
    with pytest.raises(ValueError, match="projector_init='kaiming' is not supported"):
        ADPretrainConfig.from_preset("tiny-clip", projector_init="kaiming")
    ADPretrainConfig.from_preset("tiny-clip", projector_init="torch").save_pretrained(tmp_path)
    assert ADPretrainConfig.from_pretrained(tmp_path).projector_init == "torch"
    assert ADPretrainConfig.from_preset("tiny-clip").projector_init == "release"


@pytest.mark.parametrize("dim,paper_millions", [(768, 21.3), (1024, 37.8), (1280, 59.0)])
def test_projector_size_release_vs_paper_table7(dim, paper_millions):
    """The release's block is 15 D^2 + 2062 D (+ D/4) per layer; Table 7's totals are ~9 D^2 x 4 layers."""
    from adpretrain_hf.modeling.projector_adpretrain import lkv_parameter_count

    assert lkv_parameter_count(dim) == 15 * dim * dim + 2062 * dim + dim // 4
    assert abs(4 * 9 * dim * dim / 1e6 - paper_millions) < 0.2
