"""``pipeline("anomaly-features")`` against the model called directly.

Every expected value is computed here without the pipeline: images are turned into RGB PIL
images by hand, put through the image processor and fed to ``ADPretrainModel`` with
``reference_pixel_values``; the pipeline must agree to float32 rounding. The map geometry is
checked against the processor itself (a coordinate-ramp image through its resize + crop).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, pipeline

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor
from adpretrain_hf.modeling.pipeline_anomaly_features import AnomalyFeaturesPipeline, map_to_image
from tests.helpers import BLOCK_PACKAGE_SNIPPET

ATOL = 1e-5  # float32 rounding: batched vs single matmuls / blur


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).eval()


@pytest.fixture(scope="module")
def processor(model):
    return ADPretrainImageProcessor.from_adpretrain_config(model.config)


def rgb_array(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def refs():
    return [rgb_array(64, 64, 100 + i) for i in range(3)]


def make_pipe(model, processor, **kwargs) -> AnomalyFeaturesPipeline:
    return pipeline("anomaly-features", model=model, image_processor=processor, device="cpu", **kwargs)


def direct(model, processor, images: list[Image.Image], references: list) -> object:
    """The model on the processor's pixel values: the independent computation."""
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    ref_pixels = processor([Image.fromarray(r).convert("RGB") for r in references], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values, reference_pixel_values=ref_pixels)


def assert_same_record(a: dict, b: dict, atol: float = ATOL) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys()
            for layer in a[key]:
                torch.testing.assert_close(a[key][layer], b[key][layer], atol=atol, rtol=0)
        elif isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], abs=atol)
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0)


# -- outputs against the model -------------------------------------------------------------
def test_single_image_equals_model_called_directly(model, processor, refs):
    image = rgb_array(64, 64, 1)
    out = make_pipe(model, processor)(Image.fromarray(image), references=refs, output=list(("features", "residuals", "backbone", "anomaly_map", "score")))
    expected = direct(model, processor, [Image.fromarray(image)], refs)
    assert list(out) == ["features", "residuals", "backbone", "anomaly_map", "score"]
    for name, field in (("features", expected.features), ("residuals", expected.residuals), ("backbone", expected.backbone_features)):
        assert list(out[name]) == model.config.layers
        for pos, block in enumerate(model.config.layers):
            h, w = expected.grid_sizes[pos]
            torch.testing.assert_close(out[name][block], field[pos][0].reshape(h, w, -1), atol=ATOL, rtol=0)
    torch.testing.assert_close(out["anomaly_map"], expected.anomaly_map[0], atol=ATOL, rtol=0)
    assert out["score"] == pytest.approx(expected.score[0].item(), abs=ATOL)
    assert out["anomaly_map"].dtype == torch.float32 and out["features"][1].shape == (8, 8, 32)


def test_batch_sizes_one_and_three_agree_and_maps_follow_each_input_size(model, processor, refs):
    images = [rgb_array(80, 100, 2), rgb_array(64, 64, 3), rgb_array(100, 80, 4), rgb_array(50, 70, 5)]
    pipe = make_pipe(model, processor, references=refs)
    one, three = pipe(images, batch_size=1), pipe(images, batch_size=3)  # 4 images: a short last batch too
    assert len(one) == len(three) == 4
    for image, a, b in zip(images, one, three):
        assert_same_record(a, b)
        assert tuple(a["anomaly_map"].shape) == image.shape[:2]
    expected = direct(model, processor, [Image.fromarray(i) for i in images], refs)
    for i, record in enumerate(one):
        assert record["score"] == pytest.approx(expected.score[i].item(), abs=ATOL)
        size = images[i].shape[:2]
        torch.testing.assert_close(record["anomaly_map"], map_to_image(expected.anomaly_map[i], processor, size), atol=ATOL, rtol=0)


def test_input_kinds_give_the_same_result(model, processor, refs, tmp_path):
    image = rgb_array(72, 64, 6)
    Image.fromarray(image).save(tmp_path / "img.png")
    pipe = make_pipe(model, processor, references=refs)
    baseline = pipe(Image.fromarray(image))
    for variant in (image, image.astype(np.float64) / 255.0, str(tmp_path / "img.png"), tmp_path / "img.png", (Image.fromarray(image),)):
        got = pipe(variant)
        assert_same_record(got[0] if isinstance(got, list) else got, baseline, atol=0)


def test_grayscale_and_rgba_are_converted_to_rgb(model, processor, refs):
    gray = rgb_array(64, 80, 7)[..., 0]
    rgba = np.concatenate([rgb_array(64, 64, 8), np.full((64, 64, 1), 128, np.uint8)], axis=-1)
    pipe = make_pipe(model, processor, references=refs)
    outs = pipe([gray, gray[..., None], Image.fromarray(gray), Image.fromarray(rgba, mode="RGBA"), rgba], output="score")
    expected = direct(model, processor, [Image.fromarray(np.repeat(gray[..., None], 3, -1)), Image.fromarray(rgba[..., :3])], refs)
    assert [o["score"] for o in outs[:3]] == pytest.approx([expected.score[0].item()] * 3, abs=ATOL)
    assert [o["score"] for o in outs[3:]] == pytest.approx([expected.score[1].item()] * 2, abs=ATOL)


def test_map_geometry_inverts_the_processors_resize_and_crop(processor):
    """A coordinate ramp through the processor's own resize + crop, mapped back, gives the coordinates again."""
    plain = ADPretrainImageProcessor.from_dict({**processor.to_dict(), "do_normalize": False, "do_rescale": False})
    for height, width, axis in ((80, 100, 1), (100, 80, 0), (64, 64, 1)):
        ramp = np.tile(np.arange(width, dtype=np.float32), (height, 1)) if axis else np.tile(np.arange(height, dtype=np.float32)[:, None], (1, width))
        scale = 255.0 / (max(height, width) - 1)
        image = Image.fromarray(np.round(ramp * scale).astype(np.uint8)).convert("RGB")
        crop = plain(image, return_tensors="pt")["pixel_values"][0, 0] / scale  # [64, 64] of source coordinates
        back = map_to_image(crop, processor, (height, width))
        assert tuple(back.shape) == (height, width)
        coords = torch.from_numpy(ramp)
        seen = slice(None) if height == width else slice(13, 87)  # inside the crop window, away from its edges
        region = (slice(None), seen) if axis else (seen, slice(None))
        torch.testing.assert_close(back[region], coords[region], atol=1.0, rtol=0)
        if height != width:  # the cropped-away border holds the map's edge value
            border = back[:, :8] if axis else back[:8, :]
            torch.testing.assert_close(border, torch.full_like(border, float(border.flatten()[0])), atol=1e-4, rtol=0)


# -- references ----------------------------------------------------------------------------
def test_reference_features_are_computed_once_per_reference_set(model, processor, refs, monkeypatch):
    calls, batches = [], []
    original_bank, original_backbone = model.compute_reference_bank, model.backbone.forward
    monkeypatch.setattr(model, "compute_reference_bank", lambda pv, *a, **k: calls.append(pv.shape[0]) or original_bank(pv, *a, **k))
    monkeypatch.setattr(model.backbone, "forward", lambda pv: batches.append(pv.shape[0]) or original_backbone(pv))
    pipe = make_pipe(model, processor)
    image = rgb_array(64, 64, 9)
    first = pipe(image, references=refs)
    second = pipe(image, references=[r.copy() for r in refs])  # new objects, same content: cache hit
    assert calls == [3] and batches == [3, 1, 1]
    assert_same_record(first, second, atol=0)
    changed = [r.copy() for r in refs]
    changed[0][0, 0] = 255 - changed[0][0, 0]  # content changed: recomputed
    pipe(image, references=changed)
    assert calls == [3, 3]
    built_with_refs = make_pipe(model, processor, references=refs)
    built_with_refs([image, image], batch_size=2)
    built_with_refs(image)
    assert calls == [3, 3, 3]


def test_references_of_another_size_are_processed_like_the_images(model, processor):
    big_refs = [rgb_array(96, 120, 20 + i) for i in range(2)]
    image = rgb_array(64, 64, 10)
    out = make_pipe(model, processor)(image, references=big_refs, output="score")
    expected = direct(model, processor, [Image.fromarray(image)], big_refs)
    assert out["score"] == pytest.approx(expected.score[0].item(), abs=ATOL)


def test_stored_bank_is_used_when_no_references_are_passed(processor, refs):
    torch.manual_seed(0)
    model = ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).eval()
    model.set_references(processor([Image.fromarray(r) for r in refs], return_tensors="pt")["pixel_values"])
    image = rgb_array(64, 64, 11)
    out = make_pipe(model, processor)(image, output=["features", "score"])
    expected = direct(model, processor, [Image.fromarray(image)], refs)
    assert out["score"] == pytest.approx(expected.score[0].item(), abs=ATOL)
    torch.testing.assert_close(out["features"][4], expected.features[3][0].reshape(8, 8, -1), atol=ATOL, rtol=0)


# -- options -------------------------------------------------------------------------------
def test_output_and_layer_selection_and_numpy(model, processor, refs):
    pipe = make_pipe(model, processor, references=refs)
    image = rgb_array(80, 100, 12)
    assert list(pipe(image, output="score")) == ["score"]
    torch_out = pipe(image, output=["backbone", "residuals", "anomaly_map"], layers=[2, 4])
    assert list(torch_out) == ["residuals", "backbone", "anomaly_map"]
    assert list(torch_out["residuals"]) == [2, 4] and list(torch_out["backbone"]) == [2, 4]
    np_out = pipe(image, output=["backbone", "residuals", "anomaly_map"], layers=[2, 4], return_tensors="np")
    assert isinstance(np_out["anomaly_map"], np.ndarray) and np_out["anomaly_map"].shape == (80, 100)
    np.testing.assert_array_equal(np_out["residuals"][4], torch_out["residuals"][4].numpy())
    np.testing.assert_array_equal(np_out["anomaly_map"], torch_out["anomaly_map"].numpy())
    assert isinstance(pipe(image, output="score", return_tensors="np")["score"], float)


# -- errors --------------------------------------------------------------------------------
def test_no_references_and_no_stored_bank_says_how_to_pass_them(model, processor):
    assert model.reference_bank is None
    with pytest.raises(ValueError, match=r"references=.*set_references"):
        make_pipe(model, processor)(rgb_array(64, 64, 13))


def test_unreadable_or_missing_file_is_named(model, processor, refs, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    pipe = make_pipe(model, processor, references=refs)
    with pytest.raises(ValueError, match="broken.png"):
        pipe(str(bad))
    with pytest.raises(ValueError, match="missing.png"):
        pipe(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="reference #1.*broken.png"):
        pipe(rgb_array(64, 64, 14), references=[refs[0], bad])


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"output": "heatmap"}, ValueError, "choose one or more"),
        ({"layers": [7]}, ValueError, r"taps backbone blocks \[1, 2, 3, 4\]"),
        ({"return_tensors": "tf"}, ValueError, "'pt'"),
        ({"top_k": 3}, TypeError, "unknown option"),
        ({"references": []}, ValueError, "references is empty"),
    ],
)
def test_bad_options(model, processor, refs, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        make_pipe(model, processor, references=refs)(rgb_array(64, 64, 15), **kwargs)


@pytest.mark.parametrize(
    ("image", "error", "pattern"),
    [
        (np.full((64, 64, 3), 2.0), ValueError, r"\[0, 1\]"),
        (np.zeros((3, 64, 64), np.uint8), ValueError, "transpose"),
        (np.zeros((64, 64, 3), np.int32), ValueError, "dtype int32"),
        (torch.zeros(3, 64, 64), TypeError, "permute"),
        ([], ValueError, "no images"),
    ],
)
def test_bad_images(model, processor, refs, image, error, pattern):
    with pytest.raises(error, match=pattern):
        make_pipe(model, processor, references=refs)(image)


def test_checkpoint_without_preprocessor_config_falls_back_with_a_warning(model, processor, refs, tmp_path):
    model.save_pretrained(tmp_path)
    os.remove(tmp_path / "preprocessor_config.json")
    with pytest.warns(UserWarning, match="no preprocessor_config.json"):
        pipe = pipeline("anomaly-features", model=str(tmp_path), pipeline_class=AnomalyFeaturesPipeline, device="cpu")
    assert pipe.image_processor.to_dict() == processor.to_dict()
    image = rgb_array(80, 100, 16)
    assert_same_record(pipe(image, references=refs), make_pipe(model, processor)(image, references=refs))


# -- saved checkpoints: custom pipeline, remote code, Hub ids --------------------------------
def test_saved_checkpoint_carries_the_custom_pipeline_like_pipe_save_pretrained(model, processor, tmp_path):
    model.save_pretrained(tmp_path / "model")
    make_pipe(model, processor).save_pretrained(tmp_path / "pipe")
    saved = {name: json.loads((tmp_path / name / "config.json").read_text()) for name in ("model", "pipe")}
    assert saved["model"]["custom_pipelines"] == saved["pipe"]["custom_pipelines"]
    assert set(saved["model"]["custom_pipelines"]) == {"anomaly-features"}
    module_file = sys.modules[AnomalyFeaturesPipeline.__module__].__file__
    with open(module_file, "rb") as handle:
        assert (tmp_path / "model" / "pipeline_anomaly_features.py").read_bytes() == handle.read()
    # With the package installed, its registered pipeline serves the task: no trust_remote_code
    # (ADPretrainConfig drops custom_pipelines when the task is registered locally).
    pipe = pipeline("anomaly-features", model=str(tmp_path / "model"), device="cpu")
    assert type(pipe) is AnomalyFeaturesPipeline
    image = rgb_array(80, 100, 17)
    refs = [rgb_array(64, 64, 40 + i) for i in range(2)]
    assert_same_record(pipe(image, references=refs), make_pipe(model, processor)(image, references=refs))


def _fake_hub_cache(root, repo_id: str, writer) -> str:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    writer(repo / "snapshots" / commit)
    return str(root)


@pytest.fixture(scope="module")
def remote_run(model, processor, refs, tmp_path_factory):
    """One subprocess without adpretrain_hf: pipeline from a folder and from a Hub id, AutoModel by id."""
    tmp = tmp_path_factory.mktemp("remote")
    model.save_pretrained(tmp / "ckpt")
    cache = _fake_hub_cache(tmp / "hub", "adpretrain/tiny-clip", model.save_pretrained)
    images = [rgb_array(80, 100, 30), rgb_array(64, 64, 31)]
    np.savez(tmp / "inputs.npz", a=images[0], b=images[1], *refs)
    script = BLOCK_PACKAGE_SNIPPET + textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from transformers import AutoModel, pipeline
        data = np.load({str(tmp / 'inputs.npz')!r})
        images, refs = [data["a"], data["b"]], [data[f"arr_{{i}}"] for i in range(3)]
        results = {{}}
        for name, source in (("dir", {str(tmp / 'ckpt')!r}), ("hub", "adpretrain/tiny-clip")):
            pipe = pipeline("anomaly-features", model=source, trust_remote_code=True, device="cpu")
            assert type(pipe).__module__.startswith("transformers_modules."), type(pipe).__module__
            for i, out in enumerate(pipe(images, references=refs, batch_size=2)):
                results[f"{{name}}_map_{{i}}"] = out["anomaly_map"].numpy()
                results[f"{{name}}_score_{{i}}"] = np.array(out["score"])
                results[f"{{name}}_feat_{{i}}"] = out["features"][4].numpy()
        hub_model = AutoModel.from_pretrained("adpretrain/tiny-clip", trust_remote_code=True).eval()
        with torch.no_grad():
            results["hub_model_scores"] = hub_model(torch.zeros(1, 3, 64, 64), reference_pixel_values=torch.ones(2, 3, 64, 64)).score.numpy()
        np.savez({str(tmp / 'out.npz')!r}, **results)
        print("leaked:", [m for m in sys.modules if m == "adpretrain_hf" or m.startswith("adpretrain_hf.")])
        """
    )
    env = {**os.environ, "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp / "modules"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp, env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return images, dict(np.load(tmp / "out.npz")), result.stdout


def test_remote_pipeline_runs_without_the_package(remote_run, model, processor, refs):
    images, got, stdout = remote_run
    assert "leaked: []" in stdout
    expected = direct(model, processor, [Image.fromarray(i) for i in images], refs)
    for source in ("dir", "hub"):
        for i, image in enumerate(images):
            assert float(got[f"{source}_score_{i}"]) == pytest.approx(expected.score[i].item(), abs=ATOL)
            map_i = map_to_image(expected.anomaly_map[i], processor, image.shape[:2]).numpy()
            np.testing.assert_allclose(got[f"{source}_map_{i}"], map_i, atol=ATOL, rtol=0)
            np.testing.assert_allclose(got[f"{source}_feat_{i}"], expected.features[3][i].reshape(8, 8, -1).numpy(), atol=ATOL, rtol=0)


def test_hub_id_loads_from_the_offline_cache(remote_run, model, tmp_path, monkeypatch):
    _, got, _ = remote_run
    with torch.no_grad():
        expected = model(torch.zeros(1, 3, 64, 64), reference_pixel_values=torch.ones(2, 3, 64, 64)).score
    np.testing.assert_allclose(got["hub_model_scores"], expected.numpy(), atol=ATOL, rtol=0)
    # With the package installed: AutoModel by id needs no remote code; the pipeline takes pipeline_class.
    cache = _fake_hub_cache(tmp_path / "hub", "adpretrain/tiny-clip", model.save_pretrained)
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    loaded = AutoModel.from_pretrained("adpretrain/tiny-clip", cache_dir=cache)
    assert type(loaded) is ADPretrainModel
    pipe = pipeline(
        "anomaly-features", model="adpretrain/tiny-clip", pipeline_class=AnomalyFeaturesPipeline, device="cpu", model_kwargs={"cache_dir": cache}
    )
    image = rgb_array(64, 64, 32)
    assert pipe(image, references=[rgb_array(64, 64, 33)], output="score")["score"] == pytest.approx(
        make_pipe(model, pipe.image_processor)(image, references=[rgb_array(64, 64, 33)], output="score")["score"], abs=ATOL
    )
