"""Backbone taps against the release's own tap code (tests/fixtures/release_taps/, manifest.json).

The release taps CLIP through its own OpenAI-CLIP model code (models/clip.py + models/openclip/:
the outputs of residual blocks [3, 6, 9, 12] of ViT-B, CLS dropped) and DINOv2 through its own
copy of facebookresearch/dinov2 (models/dino.py: outputs of blocks [3, 6, 9, 12] after
prepare_tokens, CLS and registers dropped). The fixture holds tiny random weights in the
release's own key format (OpenAI CLIP ``visual.*``; DINOv2 ``blocks.*``), the pixels, and the
maps the release code returned. Here the weights are mapped into the package's adapters
(transformers ``CLIPVisionModel`` / ``Dinov2Model``, key tables below) and the package's taps,
tokens ``[B, h*w, C]`` in row-major order, must equal those maps ``[B, C, h, w]``.
Self-contained: reads the fixture folder itself.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from adpretrain_hf.modeling.backbones_adpretrain import build_backbone

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "release_taps"
RELEASE_LAYERS = [3, 6, 9, 12]  # clip-base / dinov2-base in the release (models/clip.py, models/dino.py)
TOLERANCE = 1e-4  # float32, 12 blocks; measured max differences are in manifest.json


def _manifest():
    return json.loads((FIXTURES / "manifest.json").read_text())


def _fixture(name):
    tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
    state = {k.removeprefix("state_dict."): v.float() for k, v in tensors.items() if k.startswith("state_dict.")}
    features = [tensors[f"output.features.level{i}"] for i in range(len(RELEASE_LAYERS))]
    return state, tensors["input.pixel_values"], features


def _openai_clip_to_hf(state, layers):
    """OpenAI CLIP ``visual.*`` keys -> transformers 5 ``CLIPVisionModel`` keys (q/k/v split from in_proj)."""
    out = {
        "embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "embeddings.class_embedding": state["visual.class_embedding"],
        "embeddings.position_embedding.weight": state["visual.positional_embedding"],
    }
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = state[f"visual.{theirs}.{p}"]
    for i in range(layers):
        src, dst = f"visual.transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for p in ("weight", "bias"):
            q, k, v = state[f"{src}attn.in_proj_{p}"].chunk(3)
            out[f"{dst}self_attn.q_proj.{p}"], out[f"{dst}self_attn.k_proj.{p}"], out[f"{dst}self_attn.v_proj.{p}"] = q, k, v
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                                 ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{dst}{ours}.{p}"] = state[f"{src}{theirs}.{p}"]
    return out


def _dinov2_to_hf(state, layers):
    """facebookresearch/dinov2 keys -> transformers 5 ``Dinov2Model`` keys (q/k/v split from qkv)."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state["mask_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    for i in range(layers):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            q, k, v = state[f"{src}attn.qkv.{p}"].chunk(3)
            out[f"{dst}attention.q_proj.{p}"], out[f"{dst}attention.k_proj.{p}"], out[f"{dst}attention.v_proj.{p}"] = q, k, v
            for ours, theirs in (("attention.o_proj", "attn.proj"), ("norm1", "norm1"), ("norm2", "norm2"),
                                 ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                out[f"{dst}{ours}.{p}"] = state[f"{src}{theirs}.{p}"]
        out[f"{dst}layer_scale1.lambda1"] = state[f"{src}ls1.gamma"]
        out[f"{dst}layer_scale2.lambda1"] = state[f"{src}ls2.gamma"]
    return out


def _clip_adapter(state, layers):
    width, patch = state["visual.conv1.weight"].shape[0], state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    blocks = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    backbone_config = {
        "model_type": "clip_vision_model", "hidden_size": width, "intermediate_size": 4 * width,
        "num_hidden_layers": blocks, "num_attention_heads": width // 64,  # OpenAI CLIP: 64-wide heads
        "patch_size": patch, "image_size": patch * grid, "hidden_act": "quick_gelu",  # as the presets
    }
    adapter = build_backbone(SimpleNamespace(backbone_family="clip", backbone_config=backbone_config, layers=layers,
                                             image_size=patch * grid))
    adapter.model.load_state_dict(_openai_clip_to_hf(state, blocks), strict=True)
    return adapter


def _dinov2_adapter(state, layers, heads, interpolate_offset=0.1):
    width, patch = state["cls_token"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
    grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    backbone_config = {"model_type": "dinov2", "hidden_size": width, "num_hidden_layers": blocks,
                       "num_attention_heads": heads, "patch_size": patch, "image_size": patch * grid, "mlp_ratio": 4,
                       "interpolate_offset": interpolate_offset}
    adapter = build_backbone(SimpleNamespace(backbone_family="dinov2", backbone_config=backbone_config, layers=layers,
                                             image_size=patch * grid))
    adapter.model.load_state_dict(_dinov2_to_hf(state, blocks), strict=True)
    return adapter


def _as_maps(tokens, grid):
    """[B, h*w, C] row-major tokens -> [B, C, h, w], the release's layout."""
    b, n, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, grid, grid)


def _adapter(name, layers=RELEASE_LAYERS):
    state, pixels, features = _fixture(name)
    if name == "clip":
        adapter = _clip_adapter(state, layers)
    else:
        adapter = _dinov2_adapter(state, layers, _manifest()["dinov2"]["architecture"]["num_heads"])
    return adapter, pixels, features


def _errors(name, layers=RELEASE_LAYERS):
    adapter, pixels, features = _adapter(name, layers)
    grid = features[0].shape[-1]
    taps = adapter(pixels)
    return [(_as_maps(t, grid) - f).abs().max().item() for t, f in zip(taps, features)], features


@pytest.mark.parametrize("name", ["clip", "dinov2"])
def test_package_taps_equal_the_release_taps(name):
    errors, features = _errors(name)
    assert len(errors) == len(features) and max(errors) <= TOLERANCE, errors
    assert all(f.abs().max() > 0.5 for f in features)  # non-trivial maps


@pytest.mark.parametrize("name", ["clip", "dinov2"])
def test_other_blocks_would_be_caught(name):
    """One block off (e.g. 0-based indices) misses the release's maps by far: the comparison can fail."""
    errors, _ = _errors(name, [layer - 1 for layer in RELEASE_LAYERS])
    assert min(errors) > 100 * TOLERANCE, errors


@pytest.mark.parametrize("name", ["clip", "dinov2"])
def test_token_order_and_final_norm_would_be_caught(name):
    """Column-major tokens, or the final LayerNorm applied, miss the maps too."""
    adapter, pixels, features = _adapter(name)
    grid = features[0].shape[-1]
    taps = adapter(pixels)
    transposed = [(_as_maps(t, grid).transpose(2, 3) - f).abs().max().item() for t, f in zip(taps, features)]
    assert min(transposed) > 100 * TOLERANCE
    norm = adapter.model.post_layernorm if name == "clip" else adapter.model.layernorm
    normed = [(_as_maps(norm(t), grid) - f).abs().max().item() for t, f in zip(taps, features)]
    assert min(normed) > 100 * TOLERANCE


def test_transformers_position_resize_would_be_caught():
    """interpolate_offset=None (transformers 5's size-based resize of the positional embedding) is not the release's."""
    state, pixels, features = _fixture("dinov2")
    adapter = _dinov2_adapter(state, RELEASE_LAYERS, _manifest()["dinov2"]["architecture"]["num_heads"], interpolate_offset=None)
    grid = features[0].shape[-1]
    errors = [(_as_maps(t, grid) - f).abs().max().item() for t, f in zip(adapter(pixels), features)]
    assert min(errors) > 100 * TOLERANCE, errors


def test_manifest_names_the_release_and_the_procedure():
    manifest = _manifest()
    assert manifest["source"]["commit"].startswith("8d1a32c")
    for name in ("clip", "dinov2"):
        entry = manifest[name]
        assert entry["tapped_blocks_1_indexed"] == RELEASE_LAYERS and entry["release_functions"]
