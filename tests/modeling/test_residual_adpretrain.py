"""Residual features against brute force; the Feature Projector against direct formulas.

The nearest-neighbour search itself: tests/modeling/test_matching_adpretrain.py.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adpretrain_hf import ADPretrainConfig
from adpretrain_hf.modeling.projector_adpretrain import FeatureProjector, lkv_parameter_count
from adpretrain_hf.modeling.residual_adpretrain import residual_features

from .helpers import brute_force_nearest as _brute_force_nearest


def test_residual_is_raw_minus_cosine_neighbour():
    torch.manual_seed(3)
    tokens, bank = torch.randn(2, 5, 4), torch.randn(7, 4)
    res = residual_features(tokens, bank, metric="cosine", backend="torch")
    for b in range(2):
        for n in range(5):
            j = _brute_force_nearest(tokens[b, n : n + 1], bank, "cosine")[0]
            assert torch.allclose(res[b, n], tokens[b, n] - bank[j])


@pytest.mark.parametrize("dim", [768, 1024, 1280])
def test_projector_size_matches_the_papers_formula(dim):
    config = ADPretrainConfig()
    with torch.device("meta"):  # count real-size parameters without allocating them
        projector = FeatureProjector(dim, config)
    count = sum(p.numel() for p in projector.parameters())
    assert count == lkv_parameter_count(dim)
    assert abs(count - (15 * dim**2 + 2062 * dim)) / count < 0.01


def _release_block(x, proj, mha):
    """The release's block, transcribed: references repeated per image, nn.MultiheadAttention."""
    attn = proj.blocks[0].attn
    mha.in_proj_weight.data.copy_(attn.in_proj_weight)
    mha.in_proj_bias.data.copy_(attn.in_proj_bias)
    mha.out_proj.load_state_dict(attn.out_proj.state_dict())
    refs = proj.learnable.proj(proj.learnable.references).unsqueeze(0).repeat(x.shape[0], 1, 1)
    a, _ = mha(x, refs, refs, need_weights=False)
    x1 = x - a
    mlp = proj.blocks[0].mlp
    h = mlp.fc1(x1)
    gate = torch.sigmoid(mlp.se.up(torch.relu(mlp.se.down(h.mean(dim=1, keepdim=True)))))
    return x1 + mlp.fc2(F.gelu(h * gate))


def test_lkv_block_equals_the_release_formula():
    torch.manual_seed(4)
    config = ADPretrainConfig(num_learnable_references=24, projector_num_heads=4)
    proj = FeatureProjector(32, config).double()
    mha = nn.MultiheadAttention(32, 4, batch_first=True).double()
    x = torch.randn(3, 10, 32, dtype=torch.float64)
    assert torch.allclose(proj(x), _release_block(x, proj, mha), atol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "mlp", "self_attn", "cross_attn"])
def test_ablation_projectors_run(kind):
    config = ADPretrainConfig(projector_type=kind, num_learnable_references=8, projector_num_heads=4)
    proj = FeatureProjector(16, config)
    x = torch.randn(2, 6, 16)
    context = torch.randn(5, 16) if kind == "cross_attn" else None
    out = proj(x, context)
    assert out.shape == x.shape and torch.isfinite(out).all()
    if kind == "linear":
        assert torch.allclose(out, proj.linear(x))


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        FeatureProjector(30, ADPretrainConfig(projector_num_heads=16))
