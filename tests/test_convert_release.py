"""The release checkpoint converter against an independent transcription of the release's block.

Release-layout files are built here from shape arithmetic (not from the converter's tables),
saved in bf16 with ``torch.save``, converted, and compared with a direct re-implementation of
the release's projector (``nn.MultiheadAttention``, references repeated per image, 1x1 conv
projection, subtractive residual, SE-gated MLP) on the same fp32 weights. Real clip-large
shapes are checked by arithmetic and on the meta device only.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import CLIPVisionModel

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.convert_release import ReleaseCheckpointError, convert_release_checkpoint, release_key_shapes

from .release_files import D, HEADS, LAYERS, N_REFS, _level, _release_shapes, _release_state, _save, _tiny_backbone_dir


def _config(**overrides):
    return ADPretrainConfig.from_preset("tiny-clip", num_learnable_references=N_REFS, **overrides)


def _release_block(x, w, heads):
    """The release's projector, transcribed from its description, on the file's tensors (fp32)."""
    w = {k: v.float() for k, v in w.items()}
    dim = x.shape[-1]
    mha = nn.MultiheadAttention(dim, heads, batch_first=True)
    attn = "layers.0.cross_attn."
    mha.in_proj_weight.data.copy_(w[attn + "in_proj_weight"])
    mha.in_proj_bias.data.copy_(w[attn + "in_proj_bias"])
    mha.out_proj.weight.data.copy_(w[attn + "out_proj.weight"])
    mha.out_proj.bias.data.copy_(w[attn + "out_proj.bias"])
    refs = w["x_ref"].repeat(x.shape[0], 1, 1)  # [1, N_r, D] -> [B, N_r, D], repeated per image
    weight, bias = w["ref_proj.project.weight"], w["ref_proj.project.bias"]
    if weight.dim() == 3:  # Conv1d over the reference axis
        refs = F.conv1d(refs.transpose(1, 2), weight, bias).transpose(1, 2)
    elif weight.dim() == 4:  # Conv2d on [B, D, N_r, 1]
        refs = F.conv2d(refs.transpose(1, 2).unsqueeze(-1), weight, bias).squeeze(-1).transpose(1, 2)
    else:
        refs = F.linear(refs, weight, bias)
    a, _ = mha(x, refs, refs, need_weights=False)
    x1 = x - a
    mlp = "layers.0.mlp."
    h = F.linear(x1, w[mlp + "fc1.weight"], w[mlp + "fc1.bias"])
    s = torch.relu(F.linear(h.mean(dim=1, keepdim=True), w[mlp + "se.fc1.weight"], w[mlp + "se.fc1.bias"]))
    gate = torch.sigmoid(F.linear(s, w[mlp + "se.fc2.weight"], w[mlp + "se.fc2.bias"]))
    return x1 + F.linear(F.gelu(h * gate), w[mlp + "fc2.weight"], w[mlp + "fc2.bias"])


def _layer(state, i):
    prefix = _level(i)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# -- layout ---------------------------------------------------------------------------------
def test_clip_large_table_matches_shape_arithmetic():
    table = release_key_shapes(ADPretrainConfig.from_preset("clip-large"))  # built on the meta device
    dim = 1024
    expected = {_level(i) + k: s for i in range(4) for k, s in _release_shapes(dim, 2048).items()}
    assert table == expected
    per_layer = sum(math.prod(s) for k, s in table.items() if k.startswith("l1_proj."))
    assert per_layer == 15 * dim * dim + 2062.25 * dim  # the notes' ~15 D^2 + 2062 D, exactly


# -- function -------------------------------------------------------------------------------
@pytest.mark.parametrize("ref_proj", ["conv1d", "conv2d", "linear"])
def test_converted_model_computes_the_release_block(tmp_path, ref_proj):
    state = _release_state(ref_proj)
    model = convert_release_checkpoint(_save(tmp_path, {"projectors": state, "epoch": 9}), _config())
    torch.manual_seed(1)
    x = torch.randn(3, 10, D)
    with torch.no_grad():
        for i, projector in enumerate(model.projectors):
            assert projector.learnable.references.dtype == torch.float32
            assert torch.equal(projector.learnable.references, state[_level(i) + "x_ref"][0].float())
            ours, theirs = projector(x), _release_block(x, _layer(state, i), HEADS)
            assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (ours - theirs).abs().max()
    assert not bool(model.centers.initialized)


def _alias(key):
    """Spell every part differently: projectors.{i}., learnable_ref, reference_proj, attention, ffn.se.0, ffn.se.up."""
    level, _, rest = key.partition("_proj.")
    rest = rest.removeprefix("layers.0.")
    for old, new in (("x_ref", "learnable_ref"), ("ref_proj.project.", "reference_proj."), ("cross_attn.", "attention."),
                     ("mlp.", "ffn."), ("se.fc1", "se.0"), ("se.fc2", "se.up")):
        rest = rest.replace(old, new)
    return f"projectors.{int(level[1:]) - 1}.{rest}"


def _variants(state):
    return {
        "data_parallel": {"projectors": {f"module.{k}": v for k, v in state.items()}},
        "module_list": {"projectors": {f"{int(k[1]) - 1}.{k.partition('_proj.')[2]}": v for k, v in state.items()}},
        "list_of_layers": {"projectors": [_layer(state, i) for i in range(LAYERS)]},
        "bare": dict(state),
        "aliases": {"projectors": {_alias(k): v for k, v in state.items()}},
    }


@pytest.mark.parametrize("variant", ["data_parallel", "module_list", "list_of_layers", "bare", "aliases"])
def test_key_variants_give_the_same_weights(tmp_path, variant):
    state = _release_state()
    canonical = convert_release_checkpoint(_save(tmp_path, {"projectors": state}, "a.pth"), _config())
    other = convert_release_checkpoint(_save(tmp_path, _variants(state)[variant], "b.pth"), _config())
    a, b = canonical.projectors.state_dict(), other.projectors.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("as_list", [False, True])
def test_stored_centers_are_converted(tmp_path, as_list):
    centers = torch.randn(LAYERS, D).to(torch.bfloat16)
    stored = list(centers) if as_list else centers
    model = convert_release_checkpoint(_save(tmp_path, {"projectors": _release_state(), "centers": stored}), _config())
    assert bool(model.centers.initialized) and model.config.center_mode == "residual"
    assert all(torch.equal(c, centers[i].float()) for i, c in enumerate(model.centers.get()))


# -- round trip -----------------------------------------------------------------------------
def test_round_trip_bundled(tmp_path):
    backbone = _tiny_backbone_dir(tmp_path)
    path = _save(tmp_path, {"projectors": _release_state(), "centers": torch.randn(LAYERS, D)})
    model = convert_release_checkpoint(path, _config(), out_dir=tmp_path / "out", backbone_weights=backbone, bundle_backbone=True)
    loaded = ADPretrainModel.from_pretrained(tmp_path / "out")
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    real = CLIPVisionModel.from_pretrained(backbone).state_dict()
    assert all(torch.equal(loaded.backbone.model.state_dict()[k], v) for k, v in real.items())
    assert "release.pth" in loaded.config.converted_from


def test_round_trip_unbundled_loads_backbone_from_its_id(tmp_path):
    backbone = _tiny_backbone_dir(tmp_path)
    config = _config(backbone_id=backbone)
    model = convert_release_checkpoint(_save(tmp_path, {"projectors": _release_state()}), config, out_dir=tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert keys and not any(k.startswith("backbone.") for k in keys)
    loaded = ADPretrainModel.from_pretrained(tmp_path / "out")
    assert not loaded.config.bundle_backbone
    ours, theirs = model.projectors.state_dict(), loaded.projectors.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    real = CLIPVisionModel.from_pretrained(backbone).state_dict()
    assert all(torch.equal(loaded.backbone.model.state_dict()[k], v) for k, v in real.items())


# -- errors ---------------------------------------------------------------------------------
def _convert_error(tmp_path, obj, config=None):
    with pytest.raises(ReleaseCheckpointError) as info:
        convert_release_checkpoint(_save(tmp_path, obj), config or _config())
    return info.value


def test_unknown_and_out_of_range_keys_are_named(tmp_path):
    state = _release_state()
    state["l1_proj.norm.weight"] = torch.ones(D)
    state["l5_proj.x_ref"] = torch.ones(1, N_REFS, D)
    state["l1_proj.layers.1.mlp.fc1.bias"] = torch.ones(4 * D)  # a second block: not the release's layout
    message = str(_convert_error(tmp_path, {"projectors": state}))
    assert "\n" not in message
    assert "unmapped" in message and "'l1_proj.norm.weight'" in message and "'l1_proj.layers.1.mlp.fc1.bias'" in message
    assert "'l5_proj.x_ref' (layer index 4, but the preset taps 4 layers)" in message


def test_missing_key_is_named_with_its_layer(tmp_path):
    state = _release_state()
    del state["l3_proj.layers.0.mlp.fc2.bias"]
    message = str(_convert_error(tmp_path, {"projectors": state}))
    assert "missing" in message and "'l3_proj.layers.0.mlp.fc2.bias' (projector of tapped layer #2, backbone block 3)" in message


def test_wrong_shape_names_the_layer(tmp_path):
    state = _release_state()
    state["l2_proj.layers.0.mlp.fc1.weight"] = torch.zeros(4 * D, D + 1, dtype=torch.bfloat16)
    message = str(_convert_error(tmp_path, {"projectors": state}))
    assert "\n" not in message
    assert "'l2_proj.layers.0.mlp.fc1.weight' (projector of tapped layer #1, backbone block 2)" in message
    assert f"({4 * D}, {D + 1})" in message and f"({4 * D}, {D})" in message


def test_wrong_preset_says_the_widths(tmp_path):
    error = _convert_error(tmp_path, {"projectors": _release_state(n_refs=2048)}, ADPretrainConfig.from_preset("clip-large"))
    assert "'l1_proj.layers.0.cross_attn.in_proj_weight' (projector of tapped layer #0, backbone block 6)" in str(error)
    assert "32 wide" in error.hint and "1024" in error.hint


def test_two_spellings_of_one_key_are_ambiguous(tmp_path):
    state = _release_state()
    state["l1_proj.reference"] = state["l1_proj.x_ref"].clone()
    assert "ambiguous" in str(_convert_error(tmp_path, {"projectors": state}))


@pytest.mark.parametrize("obj", [torch.randn(3), [torch.randn(3)], {"epoch": 3, "lr": 0.1}])
def test_files_that_are_not_a_release_dict(tmp_path, obj):
    message = str(_convert_error(tmp_path, obj))
    assert "not a dict" in message or "no 'projectors' entry" in message


UNPICKLED = []


class _Payload:
    """Would record its own unpickling: weights_only must refuse it before that happens."""

    def __setstate__(self, state):
        UNPICKLED.append(state)


def test_arbitrary_objects_are_refused_unexecuted(tmp_path):
    payload = _Payload()
    payload.x = 1
    error = _convert_error(tmp_path, {"projectors": _release_state(), "extra": payload})
    assert "weights_only=True" in str(error) and "never run pickled code" in str(error)
    assert UNPICKLED == []


def test_unreadable_and_absent_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ReleaseCheckpointError, match="not a readable torch checkpoint"):
        convert_release_checkpoint(tmp_path / "junk.pth", _config())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_release_checkpoint(tmp_path / "absent.pth", _config())


def test_malformed_centers_and_unsupported_settings(tmp_path):
    bad = {"projectors": _release_state(), "centers": torch.randn(LAYERS, D + 1)}
    assert "center shapes" in str(_convert_error(tmp_path, bad))
    path = _save(tmp_path, {"projectors": _release_state()}, "ok.pth")
    with pytest.raises(ValueError, match="random backbone"):
        convert_release_checkpoint(path, _config(), out_dir=tmp_path / "o", bundle_backbone=True)
    with pytest.raises(ValueError, match="no backbone_id"):
        convert_release_checkpoint(path, _config(), out_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="projector_type='lkv'"):
        convert_release_checkpoint(path, _config(projector_type="mlp"))
