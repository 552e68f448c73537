"""The model's public steps (issue 14): ``backbone_features`` -> ``residuals`` -> ``project`` ->
``anomaly_map`` are what ``forward`` is, they match plain-torch computations written here, and
no package module outside the model runs the backbone or the residual matching itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

import adpretrain_hf
import adpretrain_hf.modeling
import adpretrain_hf.training
from adpretrain_hf.extractor import feature_pass
from adpretrain_hf.modeling.reference_bank_adpretrain import ReferenceBank

SIZE = 64  # tiny-clip's image size
# The only modules allowed to call ``<x>.backbone(...)`` / ``residual_features(...)``: the model itself.
OWNERS = ("modeling_adpretrain.py", "backbones_adpretrain.py")


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# -- forward == the four steps ---------------------------------------------------------------
def test_forward_is_the_four_public_steps(tiny_clip_model):
    model = tiny_clip_model
    pixels, refs = _images(3, 0), _images(4, 1)
    out = model(pixels, reference_pixel_values=refs)
    bank = model.compute_reference_bank(refs)
    tokens = model.backbone_features(pixels)
    residuals = model.residuals(tokens, bank)
    features = model.project(residuals, bank)
    anomaly_map, scores = model.anomaly_map(features, SIZE)
    for got, want in ((out.backbone_features, tokens), (out.residuals, residuals), (out.features, features)):
        assert len(got) == len(want) == 4
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert torch.equal(out.anomaly_map, anomaly_map) and torch.equal(out.score, scores)
    assert anomaly_map.shape == (3, SIZE, SIZE) and scores.shape == (3,)


def test_steps_match_plain_torch(tiny_clip_model):
    """Each step against an independent computation: the bare backbone, an explicit float64
    cosine nearest neighbour, and scipy's Gaussian filter on bilinearly upsampled norm maps."""
    model = tiny_clip_model
    pixels, refs = _images(5, 2), _images(3, 3)
    direct = [t for t in model.backbone(pixels)]  # the bare backbone, one pass
    chunked = model.backbone_features(pixels, batch_size=2)  # chunks of 2, 2, 1
    assert [tuple(t.shape) for t in chunked] == [(5, 64, 32)] * 4
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(chunked, direct))
    bank = [t.flatten(0, 1) for t in model.backbone(refs)]  # [3*64, 32] per layer
    residuals = model.residuals(direct, bank)
    for x, b, r in zip(direct, bank, residuals):
        q, m = x.double(), b.double()
        cos = torch.einsum("bnc,mc->bnm", q / q.norm(dim=-1, keepdim=True), m / m.norm(dim=-1, keepdim=True))
        expected = q - m[cos.argmax(dim=-1)]
        assert torch.allclose(r.double(), expected, atol=1e-5)
    anomaly_map, scores = model.anomaly_map(residuals, (SIZE, SIZE))
    norms = [F.interpolate(r.norm(dim=-1).reshape(5, 1, 8, 8), size=(SIZE, SIZE), mode="bilinear", align_corners=False) for r in residuals]
    mean = torch.stack(norms).mean(dim=0)[:, 0].double().numpy()
    sigma = model.config.anomaly_map_sigma
    expected_map = np.stack([gaussian_filter(m, sigma=sigma, mode="reflect") for m in mean])
    assert np.allclose(anomaly_map.numpy(), expected_map, atol=1e-4)
    assert np.allclose(scores.numpy(), expected_map.reshape(5, -1).max(axis=1), atol=1e-4)


def test_backbone_features_moves_chunks_to_the_models_dtype(tiny_clip_model):
    model = tiny_clip_model.double()
    pixels = _images(3, 4)  # float32, as a processor gives them
    tokens = model.backbone_features(pixels, batch_size=1)
    expected = model.backbone(pixels.double())
    assert all(t.dtype == torch.float64 and torch.allclose(t, e, atol=1e-10) for t, e in zip(tokens, expected))
    with pytest.raises(ValueError, match="batch_size=0"):
        model.backbone_features(pixels, batch_size=0)
    with pytest.raises(TypeError, match="dtype torch.uint8"):
        model.backbone_features((pixels * 255).to(torch.uint8))


def test_residuals_errors_and_identity(tiny_clip_model):
    model = tiny_clip_model
    tokens = model.backbone_features(_images(2, 5))
    with pytest.raises(ValueError, match="needs normal references"):
        model.residuals(tokens, None)
    bank = model.compute_reference_bank(_images(2, 6))
    with pytest.raises(ValueError, match="has 3 layers but the features have 4"):
        model.residuals(tokens, bank[:3])
    model.config.use_residual = False
    try:
        assert all(a is b for a, b in zip(model.residuals(tokens, None), tokens))
    finally:
        model.config.use_residual = True


def test_project_on_a_subset_of_layer_positions(tiny_clip_model):
    model = tiny_clip_model
    tokens = model.backbone_features(_images(2, 7))
    everything = model.project(tokens)
    subset = model.project([tokens[3], tokens[1]], layer_positions=[3, 1])
    assert torch.equal(subset[0], everything[3]) and torch.equal(subset[1], everything[1])
    with pytest.raises(ValueError, match="one per position"):
        model.project(tokens[:2])


def test_feature_pass_on_cached_tokens_equals_forward(tiny_clip_model):
    model = tiny_clip_model
    pixels, bank = _images(3, 8), ReferenceBank.from_pixels(tiny_clip_model, _images(2, 9))
    out = model(pixels, reference_features=list(bank.layers))
    fresh = feature_pass(model, pixels, bank)
    cached = feature_pass(model, pixels, bank, backbone_tokens=list(out.backbone_features))
    for result in (fresh, cached):
        assert all(torch.equal(a, b) for a, b in zip(result.residual, out.residuals))
        assert all(torch.equal(a, b) for a, b in zip(result.pretrained, out.features))


# -- the rule, checked on the source ----------------------------------------------------------
def direct_model_calls(source: str) -> list[str]:
    """Calls that bypass the model's steps: ``<x>.backbone(...)`` and ``residual_features(...)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if (name == "backbone" and isinstance(func, ast.Attribute)) or name == "residual_features":
            found.append(f"line {node.lineno}: {ast.unparse(func)}(...)")
    return found


def test_the_checker_finds_direct_calls():
    source = "t = model.backbone(x)\nr = residual_features(t, b)\nm.backbone.to(d)\ns = mod.residual_features(t, b)\nbackbone(x)\n"
    assert direct_model_calls(source) == ["line 1: model.backbone(...)", "line 2: residual_features(...)", "line 4: mod.residual_features(...)"]


def test_only_the_model_runs_its_backbone_and_residuals():
    """Library code, training and the pipelines go through the model's public steps
    (benchmarks may time the bare backbone: they are not part of the package)."""
    roots = {Path(module.__file__).resolve().parent for module in (adpretrain_hf, adpretrain_hf.modeling, adpretrain_hf.training)}
    owners = {Path(adpretrain_hf.modeling.__file__).resolve().parent / name for name in OWNERS}
    files = sorted({path.resolve() for root in roots for path in root.rglob("*.py")})
    assert len(files) > 50 and owners <= set(files)  # the walk really sees the package
    offenders = {str(path): calls for path in files if path not in owners and (calls := direct_model_calls(path.read_text()))}
    assert not offenders, f"call model.backbone_features / model.residuals instead: {offenders}"
