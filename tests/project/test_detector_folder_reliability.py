"""Issue 23: a broken or tampered detector folder never passes as a clean result.

Each case builds a small real folder (tiny CNN preset, PatchCore or FeatureNorm through
``fit_detector``), breaks it the way the issue's table did, and expects a one-line error
naming the problem where the old code loaded it (exit 0) and labelled every image normal.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.deployment import fit_detector
from adpretrain_hf.modeling.modeling_detector_adpretrain import ADPretrainDetectorModel

SIZE = 64


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cnn_model():
    torch.manual_seed(0)
    return ADPretrainModel(ADPretrainConfig.from_preset("tiny-cnn")).eval()


@pytest.fixture(scope="module")
def folders(cnn_model, tmp_path_factory):
    """A calibrated PatchCore folder (pretrained features: it stores reference banks) and a FeatureNorm one."""
    root = tmp_path_factory.mktemp("folders")
    train, val = _images(6, 0), _images(4, 1)
    for method in ("patchcore", "featurenorm"):
        model = fit_detector(cnn_model, method, train, references=train[:3], val_images=val, progress=False,
                             method_kwargs={"coreset_ratio": 0.5} if method == "patchcore" else None)
        model.save_pretrained(root / method)
    return root


def _copy(folders, method: str, tmp_path):
    import shutil

    return shutil.copytree(folders / method, tmp_path / method)


def _edit_tensors(folder, edit) -> None:
    path = str(folder / "model.safetensors")
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata=metadata)


def _edit_config(folder, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _one_line_error(folder, match: str, error=ValueError) -> None:
    with pytest.raises(error, match=match) as err:
        ADPretrainDetectorModel.from_pretrained(folder)
    assert "\n" not in str(err.value)


def test_the_intact_folders_load_and_score(folders):
    for method in ("patchcore", "featurenorm"):
        out = ADPretrainDetectorModel.from_pretrained(folders / method)(_images(2, 5))
        assert torch.isfinite(out.score).all() and out.label is not None


def test_a_nan_margin_is_refused_before_fitting(cnn_model):
    with pytest.raises(ValueError, match="margin must be a finite number >= 0, got nan"):
        # no training images either: the margin is checked first, before anything is fitted
        fit_detector(cnn_model, "featurenorm", None, val_images=_images(2, 1), margin=float("nan"), progress=False)


def test_a_nan_threshold_in_config_is_refused(folders, tmp_path):
    folder = _copy(folders, "featurenorm", tmp_path)
    _edit_config(folder, lambda c: c.update(image_threshold=float("nan")))
    _one_line_error(folder, "image_threshold is nan")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_one_non_finite_value_in_the_memory_bank_is_refused(folders, tmp_path, value):
    folder = _copy(folders, "patchcore", tmp_path)
    _edit_tensors(folder, lambda t: t["detector.memory_bank"].view(-1).__setitem__(3, value))
    _one_line_error(folder, "fitted patchcore tensor 'memory_bank' hold NaN or inf")


def test_a_nan_reference_bank_is_refused(folders, tmp_path):
    folder = _copy(folders, "patchcore", tmp_path)
    name = next(k for k in load_file(str(folder / "model.safetensors")) if k.startswith("references."))
    _edit_tensors(folder, lambda t: t[name].fill_(float("nan")))
    _one_line_error(folder, "reference bank .* hold NaN or inf")


def test_a_missing_memory_bank_is_a_one_line_error(folders, tmp_path, capfd):
    folder = _copy(folders, "patchcore", tmp_path)
    _edit_tensors(folder, lambda t: t.pop("detector.memory_bank"))
    _one_line_error(folder, "lacks the tensor 'detector.memory_bank'")
    assert "MISSING" not in capfd.readouterr().err.upper()  # no transformers table before the error


def test_a_config_without_method_is_refused(folders, tmp_path):
    folder = _copy(folders, "patchcore", tmp_path)
    _edit_config(folder, lambda c: c.pop("method"))
    _one_line_error(folder, "method: the config says None but the weights were saved with 'patchcore'")


def test_a_swapped_method_is_refused(folders, tmp_path):
    folder = _copy(folders, "patchcore", tmp_path)
    _edit_config(folder, lambda c: c.update(method="featurenorm"))
    _one_line_error(folder, "method: the config says 'featurenorm' but the weights were saved with 'patchcore'")


@pytest.mark.parametrize(
    "field, edit",
    [
        ("adpretrain_config.layers", lambda nested: nested.update(layers=nested["layers"][::-1])),
        ("adpretrain_config.projector_num_heads", lambda nested: nested.update(projector_num_heads=2 * nested["projector_num_heads"])),
        ("adpretrain_config.use_residual", lambda nested: nested.update(use_residual=not nested["use_residual"])),
    ],
)
def test_an_edited_feature_model_config_is_refused_naming_the_field(folders, tmp_path, field, edit):
    folder = _copy(folders, "patchcore", tmp_path)
    _edit_config(folder, lambda c: edit(c["adpretrain_config"]))
    _one_line_error(folder, f"another structure: {field.replace('.', '[.]')}: the config says")


def test_edited_layer_positions_are_refused(folders, tmp_path):
    folder = _copy(folders, "featurenorm", tmp_path)
    _edit_config(folder, lambda c: c.update(layer_positions=c["layer_positions"][::-1]))
    _one_line_error(folder, "layer_positions: the config says")


def test_scoring_nan_raises_naming_the_image_instead_of_labelling(folders):
    model = ADPretrainDetectorModel.from_pretrained(folders / "featurenorm")
    next(model.adpretrain.projectors.parameters()).data.view(-1)[0] = float("inf")  # a broken feature model
    with pytest.raises(FloatingPointError, match="featurenorm: image 0 of the batch scored NaN/inf") as err:
        model(_images(2, 7))
    assert "\n" not in str(err.value)
