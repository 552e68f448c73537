"""The detector contract: every registered detector (``DETECTORS``) passes the same tests.

- fit on images, then ``module(features, image_size) -> (anomaly_map [B, H, W], score [B])``,
  and ``predict`` is exactly that forward (one scoring path);
- save/load: ``settings()`` + ``state_dict()`` through a safetensors file rebuild a module
  (``build_detector_module``, as a detector folder does) that scores bit for bit the same;
- ONNX, where the module traces (FeatureNorm, PatchCore): the exported graph agrees with torch;
- bad input: wrong layout, NaN features at fit or at scoring, NaN fitted state, bad options:
  one-line errors naming the problem (issue 23), never a NaN score.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from adpretrain_hf.detectors import DETECTORS, TRAINED_METHODS, build_detector
from adpretrain_hf.detectors.cflow import CFLOWConfig
from adpretrain_hf.detectors.glass import GLASSConfig
from adpretrain_hf.detectors.uniad import UniADConfig
from adpretrain_hf.modeling.detector_module_adpretrain import DETECTOR_MODULES, build_detector_module
from tests.detectors.trained_helpers import FakeExtractor, textures

EXTRACTOR = FakeExtractor()  # [B, 3, 32, 32] -> [[B, 8, 8, 8], [B, 16, 4, 4]]
TRAIN, TEST = textures(8, seed=1), textures(3, seed=2)
OPTIONS = {  # tiny, a few steps each
    "featurenorm": {},
    "patchcore": {"embedding_dim": 16, "coreset_ratio": 0.5, "backend": "torch"},
    "padim": {},
    "cflow": {"config": CFLOWConfig(meta_epochs=1, sub_epochs=1, batch_size=4, coupling_blocks=2, condition_dim=16, lr_warm_epochs=0)},
    "glass": {"config": GLASSConfig(meta_epochs=1, dsc_hidden=16, embed_dim=None)},
    "uniad": {"config": UniADConfig(epochs=1, hidden_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                                    dim_feedforward=32, batch_size=4)},
}
EXPORTABLE = ("featurenorm", "patchcore")
NAMES = sorted(DETECTORS)


@pytest.fixture(scope="module")
def fitted():
    return {name: build_detector(name, EXTRACTOR, progress=False, batch_size=4, **OPTIONS[name]).fit(TRAIN) for name in NAMES}


def _used(detector, images):
    return detector._used_features(detector.extractor(images))


def test_every_method_has_options_and_a_registered_module():
    assert set(OPTIONS) == set(DETECTORS) and set(DETECTORS) <= set(DETECTOR_MODULES)
    assert set(TRAINED_METHODS) == {"cflow", "glass", "uniad"}


@pytest.mark.parametrize("name", NAMES)
def test_fit_then_forward_shapes_and_predict_is_the_forward(fitted, name):
    detector = fitted[name]
    maps, scores = detector.module(_used(detector, TEST), (32, 32))
    assert maps.shape == (3, 32, 32) and scores.shape == (3,) and torch.isfinite(scores).all()
    predicted = detector.predict(TEST)
    assert torch.equal(predicted[0], maps) and torch.equal(predicted[1], scores)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_rebuilds_a_bitwise_equal_module(fitted, name, tmp_path):
    module = fitted[name].module
    path = tmp_path / "detector.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    shapes = {k: list(v.shape) for k, v in module.fitted_tensors().items()}
    dtypes = {k: str(v.dtype).replace("torch.", "") for k, v in module.fitted_tensors().items()}
    rebuilt = build_detector_module(name, module.settings(), shapes, dtypes)
    rebuilt.load_state_dict(load_file(str(path)))
    features = _used(fitted[name], TEST)
    for a, b in zip(module(features, (32, 32)), rebuilt(features, (32, 32))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_onnx_export_agrees_with_torch(fitted, name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    module = build_detector_module(name, fitted[name].module.settings(),
                                   {k: list(v.shape) for k, v in fitted[name].module.fitted_tensors().items()})
    module.load_state_dict(fitted[name].module.state_dict())

    class Traced(torch.nn.Module):
        def forward(self, a, b):
            return module([a, b], (32, 32))

    features = _used(fitted[name], TEST)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(Traced(), tuple(features), str(path), input_names=["a", "b"], output_names=["map", "score"],
                      dynamic_axes={"a": {0: "batch"}, "b": {0: "batch"}}, dynamo=False)
    got = ort.InferenceSession(str(path)).run(None, {"a": features[0].numpy(), "b": features[1].numpy()})
    want = module(features, (32, 32))
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_a_different_layout_is_a_one_line_error(fitted, name):
    other = FakeExtractor(channels=(4, 16))
    with pytest.raises(ValueError, match="fitted|layout|shape") as err:
        fitted[name]._used_features(other(TEST))  # channels 4 instead of 8
        if name == "featurenorm":  # FeatureNorm fits nothing: any channels are fine
            raise ValueError("fitted layout: not applicable")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "featurenorm"])
def test_non_finite_training_features_are_refused(name):
    poisoned = TRAIN.clone()
    poisoned[2, :, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf") as err:
        build_detector(name, EXTRACTOR, progress=False, batch_size=4, **OPTIONS[name]).fit(poisoned)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_scoring_nan_raises_naming_the_image(fitted, name):
    features = _used(fitted[name], TEST)
    features = [f.clone() for f in features]
    features[0][1] = float("nan")
    with pytest.raises(FloatingPointError, match=f"{name}: image 1 of the batch scored NaN/inf"):
        fitted[name].module(features, (32, 32))


@pytest.mark.parametrize("name", ["patchcore", "padim"])
def test_a_non_finite_fitted_tensor_is_refused(fitted, name):
    module = fitted[name].module
    tensors = {k: v.contiguous().clone() for k, v in module.fitted_tensors().items()}
    first = sorted(tensors)[0]
    tensors[first].view(-1)[0] = float("inf")
    rebuilt = build_detector_module(name, module.settings())
    with pytest.raises(ValueError, match=f"fitted {name} tensor {first!r} hold NaN or inf"):
        rebuilt.set_fitted(tensors)
    with pytest.raises(ValueError, match="no fitted"):  # nothing fitted: never scores
        rebuilt.check_fitted()


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("patchcore", {"embedding_dim": -5}, "embedding_dim must be a positive int"),
        ("patchcore", {"image_score": "maxx"}, "unknown image_score 'maxx' \\(did you mean 'max'\\?\\)"),
        ("patchcore", {"coreset_ratio": 0.0}, "coreset_ratio must be in \\(0, 1\\]"),
        ("padim", {"mode": "per-layer"}, "did you mean 'per_layer'"),
        ("padim", {"cov_eps": float("nan")}, "cov_eps must be a finite number"),
        ("featurenorm", {"sigma": -1}, "sigma must be a finite number >= 0"),
        ("patchcore", {"sigma": float("nan")}, "sigma must be a finite number >= 0"),
        ("featurenorm", {"batch_size": 0}, "batch_size must be a positive int"),
    ],
)
def test_bad_options_are_one_line_errors_at_construction(name, options, message):
    with pytest.raises(ValueError, match=message) as err:
        build_detector(name, EXTRACTOR, progress=False, **options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_positions_out_of_range_are_one_line_errors(name):
    with pytest.raises(ValueError, match="layer position 99 is out of range"):
        build_detector(name, EXTRACTOR, progress=False, layer_positions=[0, 99], batch_size=4, **OPTIONS[name]).fit(TRAIN).predict(TEST)


def test_unknown_saved_options_name_the_closest_valid_one():
    with pytest.raises(ValueError, match="unknown patchcore option 'embeding_dim' \\(did you mean 'embedding_dim'\\?\\)"):
        build_detector_module("patchcore", {"embeding_dim": 8})
    with pytest.raises(KeyError, match="no detector module 'patchkor' is registered"):
        build_detector_module("patchkor", {})


@pytest.mark.parametrize("name", NAMES)
def test_unknown_constructor_options_name_the_closest_valid_one(name):
    with pytest.raises(ValueError, match=f"unknown {name} option 'bogus_key'") as err:
        build_detector(name, EXTRACTOR, bogus_key=1)
    assert "valid options are" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="did you mean 'batch_size'"):
        build_detector(name, EXTRACTOR, batch_sise=4)
