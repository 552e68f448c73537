"""Fitted detectors as folders: save/load round trips of every method, remote code without the
package, provenance and calibration in the config, push_to_hub through save_pretrained."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tests.helpers import BLOCK_PACKAGE_SNIPPET
from safetensors import safe_open
from transformers import AutoConfig, AutoModel

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.deployment import detector_to_model, fit_detector
from adpretrain_hf.detectors import build_detector
from adpretrain_hf.detectors.cflow import CFLOWConfig
from adpretrain_hf.detectors.glass import GLASSConfig
from adpretrain_hf.detectors.uniad import UniADConfig
from adpretrain_hf.extractor import ModelFeatureExtractor
from adpretrain_hf.modeling.configuration_detector_adpretrain import ADPretrainDetectorConfig
from adpretrain_hf.modeling.detector_module_adpretrain import allocate_buffers
from adpretrain_hf.modeling.modeling_detector_adpretrain import ADPretrainDetectorModel

TRAINED_CONFIGS = {  # tiny, --quick-sized
    "cflow": CFLOWConfig(meta_epochs=1, sub_epochs=1, batch_size=4, coupling_blocks=2, condition_dim=16, lr_warm_epochs=0),
    "glass": GLASSConfig(meta_epochs=1, dsc_hidden=16, embed_dim=None),
    "uniad": UniADConfig(epochs=1, hidden_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32, batch_size=4),
}
FITS = [
    ("featurenorm", "pretrained", {}),
    ("featurenorm", "backbone", {}),
    ("patchcore", "pretrained", {}),
    ("patchcore", "backbone", {"image_score": "max", "layer_positions": [0, 2]}),
    ("padim", "pretrained", {}),
    ("padim", "pretrained", {"mode": "concatenated", "num_features": 20}),
    ("featurenorm", "pretrained", {"variant": "release"}),
    ("patchcore", "pretrained", {"variant": "release"}),
    ("padim", "pretrained", {"variant": "release"}),
] + [(name, "pretrained", {"config": config}) for name, config in TRAINED_CONFIGS.items()] + [
    ("glass", "backbone", {"config": TRAINED_CONFIGS["glass"], "layer_positions": [0, 1, 2]}),  # not GLASS's default (last 2)
]


def _images(n, size, seed):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cnn_model():
    torch.manual_seed(0)
    return ADPretrainModel(ADPretrainConfig.from_preset("tiny-cnn")).eval()


def _fit(model, method, kind, kwargs):
    size = model.config.image_size
    train = _images(10, size, 0)
    extractor = ModelFeatureExtractor(model, feature_kind=kind)
    extractor.set_references(train[:4])
    detector = build_detector(method, extractor, progress=False, batch_size=8, **kwargs).fit(train)
    return detector, _images(3, size, 1)


@pytest.mark.parametrize("method,kind,kwargs", FITS, ids=[f"{m}-{k}-{i}" for i, (m, k, _) in enumerate(FITS)])
def test_round_trip_reproduces_the_fitted_maps(cnn_model, method, kind, kwargs, tmp_path):
    detector, test = _fit(cnn_model, method, kind, kwargs)
    ref_maps, ref_scores = detector.predict(test)  # the fitting code's own path (faiss/torch search)
    model = detector_to_model(detector, feature_source="somewhere/tiny-cnn")
    out = model(test)
    # The folder's self-contained scoring agrees with the package's detector...
    assert torch.allclose(out.anomaly_map, ref_maps, atol=1e-4, rtol=1e-4)
    assert torch.allclose(out.score, ref_scores, atol=1e-4, rtol=1e-4)
    assert out.label is None and out.pred_mask is None  # not calibrated
    # ... and a reload from safetensors + JSON reproduces it bit for bit.
    model.save_pretrained(tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, ADPretrainDetectorModel)
    again = loaded(test)
    assert torch.equal(again.anomaly_map, out.anomaly_map) and torch.equal(again.score, out.score)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["method"] == method and saved["feature_kind"] == kind and saved["feature_source"] == "somewhere/tiny-cnn"
    assert saved["adpretrain_config"]["layers"] == list(cnn_model.config.layers)
    if "layer_positions" in kwargs:
        assert saved["layer_positions"] == kwargs["layer_positions"]
    # the variant is saved (only when not the package's) and rebuilt on load
    assert saved["method_settings"].get("variant", "package") == kwargs.get("variant", "package")
    assert getattr(loaded.detector, "variant", "package") == kwargs.get("variant", "package")
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert any(k.startswith("adpretrain.backbone.") for k in keys)  # the backbone is bundled
    assert all(f"detector.{name}" in keys or f"references.{name}" in keys for name in saved["fitted_shapes"])
    assert all(f"detector.{name}" in keys for name in loaded.detector.state_dict())  # a trained method's network too
    if method == "patchcore":
        assert torch.equal(loaded.detector.memory_bank, detector.memory_bank)


def test_calibration_and_provenance_survive_save(tiny_clip_model, tmp_path):
    train, val = _images(8, 64, 0), _images(5, 64, 2)
    model = fit_detector(tiny_clip_model, "patchcore", train, layer_positions=[2, 3], references=train[:3], progress=False,
                         val_images=val, quantile=0.8)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, ADPretrainDetectorConfig) and config.layer_positions == [2, 3]
    assert config.fitted_shapes["reference_bank_2"] == [3 * 64, 32]  # 3 references x 8x8 tokens, width 32
    for field in ("image_threshold", "pixel_threshold", "score_min", "score_max", "calibration"):
        assert getattr(config, field) == getattr(model.config, field) is not None
    loaded = ADPretrainDetectorModel.from_pretrained(tmp_path)
    test = _images(4, 64, 3)
    a, b = model(test), loaded(test)
    for name in ("anomaly_map", "score", "normalized_score", "label", "pred_mask"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert ((b.normalized_score >= 0.5) == b.label).all()
    assert torch.equal(b.label, b.score >= config.image_threshold)


def test_layer_positions_survive_save_and_score_those_layers(tiny_clip_model, tmp_path):
    """``fit_detector(layer_positions=)`` is saved and reloaded; the map is FeatureNorm of those layers only."""
    train, test = _images(4, 64, 0), _images(2, 64, 1)
    model = fit_detector(tiny_clip_model, "featurenorm", train, layer_positions=[1, 3], progress=False)
    assert model.config.layer_positions == [1, 3] and model.layer_positions == [1, 3]
    model.save_pretrained(tmp_path)
    loaded = ADPretrainDetectorModel.from_pretrained(tmp_path)
    assert loaded.layer_positions == [1, 3]
    assert torch.equal(loaded(test).anomaly_map, model(test).anomaly_map)
    # Independently: FeatureNorm over positions 1 and 3 only is the model's own map of those layers.
    bank = tiny_clip_model.compute_reference_bank(train)
    tokens = tiny_clip_model.backbone_features(test)
    features = tiny_clip_model.project(tiny_clip_model.residuals(tokens, bank))
    expected, _ = tiny_clip_model.anomaly_map([features[1], features[3]], 64)
    torch.testing.assert_close(model(test).anomaly_map, expected, rtol=1e-4, atol=1e-5)


def test_wrapping_needs_a_model_backed_fitted_detector(cnn_model):
    class Plain:
        feature_kind, image_size, device, layer_positions = "backbone", (32, 32), torch.device("cpu"), [0]

        def __call__(self, x):
            return [x]

    with pytest.raises(TypeError, match="ModelFeatureExtractor"):
        detector_to_model(build_detector("featurenorm", Plain()))
    detector = build_detector("patchcore", ModelFeatureExtractor(cnn_model, "backbone"))
    with pytest.raises(RuntimeError, match="not fitted"):
        detector_to_model(detector)


def _run_without_package(script: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    return subprocess.run([sys.executable, "-c", BLOCK_PACKAGE_SNIPPET + textwrap.dedent(script)],
                          capture_output=True, text=True, cwd=tmp_path, env=env)


def test_remote_code_loads_without_the_package(tiny_clip_model, tmp_path):
    train, test = _images(8, 64, 0), _images(2, 64, 4)
    for method in ("featurenorm", "patchcore", "padim"):
        model = fit_detector(tiny_clip_model, method, train, progress=False, val_images=_images(4, 64, 5))
        model.save_pretrained(tmp_path / method)
        torch.save(model(test).anomaly_map, tmp_path / f"{method}.pt")
    torch.save(test, tmp_path / "test.pt")
    fit_detector(tiny_clip_model, "glass", train, progress=False, method_kwargs={"config": TRAINED_CONFIGS["glass"]}
                 ).save_pretrained(tmp_path / "glass")
    result = _run_without_package(
        f"""
        import torch
        from transformers import AutoModel
        test = torch.load({str(tmp_path / 'test.pt')!r})
        for method in ("featurenorm", "patchcore", "padim"):
            model = AutoModel.from_pretrained({str(tmp_path)!r} + "/" + method, trust_remote_code=True)
            out = model(test)
            assert out.label is not None and out.pred_mask is not None
            diff = (out.anomaly_map - torch.load({str(tmp_path)!r} + "/" + method + ".pt")).abs().max().item()
            print(method, type(model).__module__, diff)
        try:
            AutoModel.from_pretrained({str(tmp_path / 'glass')!r}, trust_remote_code=True)
        except ImportError as err:
            print("glass:", err)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    for method in ("featurenorm", "patchcore", "padim"):
        module, diff = lines[method].split()
        assert "transformers_modules" in module and float(diff) == 0.0
    assert "pip install adpretrain-hf" in lines["glass:"]


def test_push_to_hub_uploads_the_saved_folder(tiny_clip_model, monkeypatch):
    import transformers.utils.hub as hf_hub_utils

    model = fit_detector(tiny_clip_model, "featurenorm", _images(4, 64, 0), progress=False)
    seen = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

    def fake_upload(self, folder, repo_id, **kwargs):
        seen["repo"], seen["files"] = repo_id, sorted(os.listdir(folder))
        seen["config"] = json.loads(open(os.path.join(folder, "config.json")).read())

    monkeypatch.setattr(hf_hub_utils, "hf_api", lambda: FakeApi(), raising=False)
    monkeypatch.setattr(hf_hub_utils, "create_and_tag_model_card", lambda *a, **k: type("Card", (), {"save": lambda self, p: None})())
    monkeypatch.setattr(ADPretrainDetectorModel, "_upload_modified_files", fake_upload)
    model.push_to_hub("someone/featurenorm-detector")
    assert seen["repo"] == "someone/featurenorm-detector"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_detector_adpretrain.py"} <= set(seen["files"])
    assert seen["config"]["auto_map"]["AutoModel"].endswith("ADPretrainDetectorModel")


def test_fit_from_a_checkpoint_folder_and_image_files(tiny_clip_model, tmp_path):
    import numpy as np
    from PIL import Image

    from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor

    tiny_clip_model.save_pretrained(tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (80, 96, 3), dtype=np.uint8) for _ in range(10)]
    paths = []
    for i, array in enumerate(arrays[:9]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(array).save(paths[-1])
    model = fit_detector(str(tmp_path / "ckpt"), "featurenorm", paths, progress=False,
                         val_images=[Image.fromarray(arrays[8]), arrays[9]])
    assert model.config.feature_source == str(tmp_path / "ckpt")
    # Default references: the first 8 training images, through the checkpoint's processor.
    processor = ADPretrainImageProcessor.from_adpretrain_config(tiny_clip_model.config)
    refs = processor([Image.fromarray(a) for a in arrays[:8]], return_tensors="pt")["pixel_values"]
    expected = tiny_clip_model.compute_reference_bank(refs)
    for layer in model.layer_positions:
        assert torch.equal(getattr(model.references, f"reference_bank_{layer}"), expected[layer])
    with pytest.raises(ValueError, match="val_images"):
        fit_detector(tiny_clip_model, "featurenorm", paths[:2], progress=False, val_labels=[0, 1])


def test_saving_over_another_detector_leaves_nothing_of_it(tiny_clip_model, tmp_path):
    """Detector folders are written like model folders: swapped in whole, so a PaDiM saved over a
    PatchCore keeps no memory bank, and what save_pretrained does not own (a results file) stays."""
    from safetensors import safe_open

    folder = tmp_path / "detector"
    fit_detector(tiny_clip_model, "patchcore", _images(4, 64, 1), progress=False).save_pretrained(folder)
    (folder / "results.json").write_text("{}")
    (folder / "stale.safetensors").write_bytes(b"old")
    fit_detector(tiny_clip_model, "featurenorm", _images(4, 64, 2), progress=False).save_pretrained(folder)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        assert not any(key.startswith("memory_bank") for key in handle.keys())
    assert json.loads((folder / "config.json").read_text())["method"] == "featurenorm"
    assert not (folder / "stale.safetensors").exists() and (folder / "results.json").is_file()
    assert (folder / "pipeline_anomaly_detection.py").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name != "detector"]  # no temporary left beside it


def test_fitted_tensors_take_any_stored_dtype_and_refuse_an_unknown_one():
    fitted = allocate_buffers(torch.nn.Module(), {"counts": (2,), "mask": (3,), "bank": (4, 2)}, {"counts": "int64", "mask": "bool"})
    assert (fitted.counts.dtype, fitted.mask.dtype, fitted.bank.dtype) == (torch.int64, torch.bool, torch.float32)
    with pytest.raises(ValueError, match="stored dtype 'int65' is not a torch dtype"):  # was a bare KeyError
        allocate_buffers(torch.nn.Module(), {"counts": (2,)}, {"counts": "int65"})


def test_a_trained_method_folder_loads_in_a_fresh_process_after_import_adpretrain_hf(cnn_model, tmp_path):
    """CFLOW/GLASS/UniAD register their scoring modules where they are defined; ``import adpretrain_hf``
    must be enough to load their folders (no importlib back into the package from the model)."""
    detector, test = _fit(cnn_model, "uniad", "pretrained", {"config": TRAINED_CONFIGS["uniad"]})
    model = detector_to_model(detector)
    model.save_pretrained(tmp_path / "uniad")
    torch.save(model(test).score, tmp_path / "score.pt")
    torch.save(test, tmp_path / "test.pt")
    script = f"""
import torch, adpretrain_hf
torch.set_num_threads(1)  # as the tests run: the same reduction order
from transformers import AutoModel
model = AutoModel.from_pretrained({str(tmp_path / 'uniad')!r})
score = model(torch.load({str(tmp_path / 'test.pt')!r})).score
assert torch.equal(score, torch.load({str(tmp_path / 'score.pt')!r})), (score,)
print(type(model.detector).__name__)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "UniADModule"
