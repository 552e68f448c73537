"""The converter on a genuine release checkpoint: the fixture .pth -> projectors -> the release's outputs.

tests/fixtures/release_parity/ holds a MultiScaleAttentionProjector([64]*4) checkpoint written with
main.py's wrapping ({"projectors": state_dict, "img_auc", "pix_auc", "pix_pro"}, numpy.float64
metrics) and the outputs the release's own forward computed from recorded inputs
(projector.safetensors; manifest.json: models/projector.py:137-158, fp32, eval). The package
must reproduce them through the converter, in fp32 (<= 1e-5) and from a bf16 copy of the file
(the release trains in bf16), from the wrapped file and from a bare state dict, and through the
CLI entry point. Self-contained: reads the fixture folder itself.
"""

import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adpretrain_hf import ADPretrainConfig
from adpretrain_hf.cli import main
from adpretrain_hf.convert_release import convert_release_checkpoint
from adpretrain_hf.release_checkpoint_file import ReleaseCheckpointError, load_release_file

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "release_parity"
CHECKPOINT = FIXTURES / "projector_release_state_dict.pth"
PRESET = "tiny-release"  # width 64, 4 taps, 2048 references, 16 heads: the fixture's shape
LEVELS = 4
TOLERANCE = 1e-5  # manifest: "a float32 re-implementation should match to ~1e-5"
BF16_RELATIVE = 0.01  # bf16 weights (8 mantissa bits) vs the fp32 outputs, relative to the output scale (measured <= 7.4e-4)


def _fixture():
    return load_file(str(FIXTURES / "projector.safetensors"))


def _project(model, residual):
    """(B, C, h, w) map -> tokens (row-major, as the release) -> the model's projector -> (B, C, h, w)."""
    b, c, h, w = residual.shape
    tokens = residual.flatten(2).transpose(1, 2)
    return model(tokens).transpose(1, 2).reshape(b, c, h, w)


def _max_errors(model):
    fixture = _fixture()
    errors = []
    with torch.no_grad():
        for level, projector in enumerate(model.projectors):
            ours = _project(projector, fixture[f"input.residual.level{level}"])
            errors.append((ours - fixture[f"output.projected.level{level}"]).abs().max().item())
    return errors


def _save(obj, path):
    torch.save(obj, path)
    return path


def test_genuine_checkpoint_reproduces_the_release_outputs():
    model = convert_release_checkpoint(CHECKPOINT, PRESET)
    errors = _max_errors(model)
    assert len(errors) == LEVELS and max(errors) <= TOLERANCE, errors


def test_plain_weights_only_load_refuses_it_and_ours_reads_the_metrics():
    """The wrapping really holds numpy.float64 (else the allow-list test below would be vacuous)."""
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    loaded = load_release_file(CHECKPOINT)
    assert sorted(loaded) == ["img_auc", "pix_auc", "pix_pro", "projectors"]
    assert type(loaded["img_auc"]).__name__ == "float64" and abs(float(loaded["img_auc"]) - 0.91) < 1e-12
    assert len(loaded["projectors"]) == 60


def test_bf16_copy_converts_to_its_exact_fp32_values(tmp_path):
    wrapped = load_release_file(CHECKPOINT)
    bf16 = {k: v.to(torch.bfloat16) for k, v in wrapped["projectors"].items()}
    path = _save({**wrapped, "projectors": bf16}, tmp_path / "bf16.pth")
    model = convert_release_checkpoint(path, PRESET)
    for level, projector in enumerate(model.projectors):
        refs = bf16[f"l{level + 1}_proj.x_ref"][0].float()
        assert torch.equal(projector.learnable.references, refs)  # bf16 -> fp32 is exact
        assert torch.equal(projector.blocks[0].mlp.se.up.weight, bf16[f"l{level + 1}_proj.layers.0.mlp.se.fc2.weight"].float())
    fixture = _fixture()
    with torch.no_grad():
        for level, projector in enumerate(model.projectors):
            expected = fixture[f"output.projected.level{level}"]
            error = (_project(projector, fixture[f"input.residual.level{level}"]) - expected).abs().max()
            assert error <= BF16_RELATIVE * expected.abs().max(), (level, error)


def test_bare_state_dict_converts_like_the_wrapped_file(tmp_path):
    state = load_release_file(CHECKPOINT)["projectors"]
    model = convert_release_checkpoint(_save(dict(state), tmp_path / "bare.pth"), PRESET)
    assert max(_max_errors(model)) <= TOLERANCE


def _rewrite_pickle(path, out, old, new):
    """Copy a torch zip checkpoint with one module name replaced in its pickle (protocol 2: newline-ended names)."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert old.encode() in data
                data = data.replace(old.encode(), new.encode())
            dst.writestr(item, data)
    return out


def test_numpy_1x_scalar_name_is_allowed(tmp_path):
    """numpy 1.x pickles numpy.float64 as numpy.core.multiarray.scalar: on the allow-list too."""
    old_name = _rewrite_pickle(CHECKPOINT, tmp_path / "np1.pth", "numpy._core.multiarray\n", "numpy.core.multiarray\n")
    loaded = load_release_file(old_name)
    assert abs(float(loaded["pix_pro"]) - 0.86) < 1e-12


def test_other_globals_are_refused_in_one_line(tmp_path):
    """Anything outside the allow-list (here a numpy array: ndarray, _reconstruct) is refused."""
    import numpy

    path = _save({"projectors": load_release_file(CHECKPOINT)["projectors"], "curve": numpy.zeros(3)}, tmp_path / "np_array.pth")
    with pytest.raises(ReleaseCheckpointError) as info:
        load_release_file(path)
    message = str(info.value)
    assert "\n" not in message and "weights_only=True" in message and "numpy.dtypes.Float64DType" in message
    assert "re-save just its tensors" in info.value.hint


@pytest.mark.parametrize("break_it", ["missing", "shape"])
def test_mismatches_against_the_preset_name_the_key(tmp_path, break_it):
    state = dict(load_release_file(CHECKPOINT)["projectors"])
    key = "l3_proj.layers.0.cross_attn.out_proj.bias"
    if break_it == "missing":
        del state[key]
    else:
        state[key] = torch.zeros(65)
    with pytest.raises(ReleaseCheckpointError) as info:
        convert_release_checkpoint(_save(state, tmp_path / "bad.pth"), PRESET)
    assert f"'{key}'" in str(info.value) and "\n" not in str(info.value)


def test_wrong_preset_is_refused_with_the_widths():
    with pytest.raises(ReleaseCheckpointError) as info:
        convert_release_checkpoint(CHECKPOINT, "clip-base")
    assert "64 wide" in info.value.hint and "768" in info.value.hint


def test_cli_writes_a_folder_that_reproduces_the_fixture(tmp_path, capsys):
    """The acceptance path: adpretrain convert --release-checkpoint <fixture> ... OUT, then from_pretrained."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from adpretrain_hf import ADPretrainModel, get_preset

    kwargs = {k: v for k, v in get_preset(PRESET).backbone_config.items() if k != "model_type"}
    CLIPVisionModel(CLIPVisionConfig(**kwargs)).save_pretrained(tmp_path / "backbone")
    out = tmp_path / "out"
    args = ["convert", "--release-checkpoint", str(CHECKPOINT), "--preset", PRESET,
            "--bundle-backbone", "--backbone-weights", str(tmp_path / "backbone"), str(out)]
    assert main(args) == 0
    assert "converted 4 projectors" in capsys.readouterr().out
    loaded = ADPretrainModel.from_pretrained(out)
    assert loaded.config.num_learnable_references == 2048 and loaded.config.projector_num_heads == 16
    assert max(_max_errors(loaded)) <= TOLERANCE


def test_the_check_can_fail():
    """A projector with other (random) weights misses the fixture by far: the tolerance is meaningful."""
    from adpretrain_hf import ADPretrainModel

    torch.manual_seed(0)
    assert min(_max_errors(ADPretrainModel(ADPretrainConfig.from_preset(PRESET)))) > 100 * TOLERANCE
