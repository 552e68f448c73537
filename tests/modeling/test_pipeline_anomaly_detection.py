"""``pipeline("anomaly-detection")`` on a fitted detector folder: decisions, maps at the input size,
real batching, and remote code where adpretrain_hf is not installed."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from adpretrain_hf.deployment import fit_detector
from adpretrain_hf.modeling import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor
from adpretrain_hf.modeling.modeling_detector_adpretrain import ADPretrainDetectorModel
from adpretrain_hf.modeling.pipeline_anomaly_detection import AnomalyDetectionPipeline
from tests.helpers import BLOCK_PACKAGE_SNIPPET

IMAGE_SIZE = 64  # tiny-clip's processor size


def _images(count, seed, sizes=None):
    rng = np.random.default_rng(seed)
    sizes = sizes or [(IMAGE_SIZE, IMAGE_SIZE)] * count
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in sizes]


def _fit(folder, calibrated=True):
    torch.manual_seed(0)
    model = ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).eval()
    detector = fit_detector(model, "patchcore", _images(6, 0), val_images=_images(4, 1) if calibrated else None, progress=False)
    detector.save_pretrained(folder)  # ships the pipeline code itself (the remote-code test below relies on it)
    return folder


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("detector") / "patchcore")


@pytest.fixture(scope="module")
def detect(detector_dir):
    return pipeline("anomaly-detection", model=str(detector_dir), device="cpu")


def test_the_registered_task_needs_no_remote_code(detect, detector_dir):
    assert type(detect) is AnomalyDetectionPipeline  # the package's class, although config.json names the folder's
    assert "anomaly-detection" in json.loads((detector_dir / "config.json").read_text())["custom_pipelines"]


def test_decisions_match_the_detector_model_and_its_calibration(detect, detector_dir):
    image = _images(1, 2)[0]  # processor-sized and square: the processor leaves the geometry alone
    model = ADPretrainDetectorModel.from_pretrained(detector_dir).eval()
    pixels = ADPretrainImageProcessor.from_pretrained(detector_dir)(Image.fromarray(image), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        maps, scores = model.score(pixels)
    config = model.config
    out = detect(image)
    assert out["score"] == pytest.approx(float(scores[0]), rel=1e-5)
    expected = np.clip((float(scores[0]) - config.image_threshold) / (config.score_max - config.score_min) + 0.5, 0.0, 1.0)
    assert out["normalized_score"] == pytest.approx(expected, abs=1e-5)
    assert out["label"] == (float(scores[0]) >= config.image_threshold)
    torch.testing.assert_close(out["anomaly_map"], maps[0].float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(out["pred_mask"], maps[0].float() >= config.pixel_threshold)


def test_maps_come_back_at_each_inputs_own_size(detect):
    rgb = _images(2, 3, sizes=[(48, 80), (90, 30)])
    gray = np.random.default_rng(4).integers(0, 256, (33, 41), dtype=np.uint8)
    rgba = Image.fromarray(np.random.default_rng(5).integers(0, 256, (70, 50, 4), dtype=np.uint8), "RGBA")
    results = detect([*rgb, gray, rgba])
    for result, (height, width) in zip(results, [(48, 80), (90, 30), (33, 41), (70, 50)]):
        assert tuple(result["anomaly_map"].shape) == (height, width)
        assert tuple(result["pred_mask"].shape) == (height, width) and result["pred_mask"].dtype == torch.bool


def test_batching_gives_the_same_answers(detect):
    images = _images(5, 6, sizes=[(64, 64), (50, 70), (64, 64), (80, 40), (64, 64)])
    one = detect(images, batch_size=1)
    many = detect(images, batch_size=4)
    for a, b in zip(one, many):
        assert a["score"] == pytest.approx(b["score"], rel=1e-5, abs=1e-6)
        assert a["label"] == b["label"]
        torch.testing.assert_close(a["anomaly_map"], b["anomaly_map"], rtol=1e-5, atol=1e-5)


def test_numpy_outputs_and_bad_options(detect):
    out = detect(_images(1, 7)[0], return_tensors="np")
    assert isinstance(out["anomaly_map"], np.ndarray) and out["pred_mask"].dtype == np.bool_
    with pytest.raises(TypeError, match="unknown option"):
        detect(_images(1, 7)[0], references=[])
    with pytest.raises(ValueError, match="no images given"):
        detect([])


def test_an_uncalibrated_detector_leaves_the_decisions_empty(tmp_path):
    folder = _fit(tmp_path / "raw", calibrated=False)
    out = pipeline("anomaly-detection", model=str(folder), device="cpu")(_images(1, 8)[0])
    assert np.isfinite(out["score"]) and out["anomaly_map"].shape == (IMAGE_SIZE, IMAGE_SIZE)
    assert out["normalized_score"] is None and out["label"] is None and out["pred_mask"] is None


def test_remote_code_serves_the_task_without_the_package(detect, detector_dir, tmp_path):
    images = _images(3, 9, sizes=[(64, 64), (50, 70), (70, 50)])
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    expected = [r["score"] for r in detect([str(tmp_path / f"{i}.png") for i in range(3)])]
    script = BLOCK_PACKAGE_SNIPPET + f"""
import json
from transformers import pipeline
detect = pipeline("anomaly-detection", model={str(detector_dir)!r}, trust_remote_code=True, device="cpu")
assert "adpretrain_hf" not in type(detect).__module__, type(detect).__module__
out = detect([{", ".join(repr(str(tmp_path / f"{i}.png")) for i in range(3))}], batch_size=2)
print(json.dumps([[r["score"], list(r["anomaly_map"].shape), r["label"]] for r in out]))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r[1] for r in remote] == [[64, 64], [50, 70], [70, 50]]
    np.testing.assert_allclose([r[0] for r in remote], expected, rtol=1e-5)



def test_a_per_call_threshold_decides_this_calls_labels(detect, detector_dir):
    """``detect(image, threshold=t)``: label = score >= t, normalized score 0.5 at t (computed here), the
    thresholds used reported; the calibrated ones again on the next call without it."""
    images = _images(3, 5)
    config = detect.model.config
    plain = detect(images)
    scores = [r["score"] for r in plain]
    middle = float(np.median(scores))
    custom = detect(images, threshold=middle, pixel_threshold=-1e9)
    assert [r["label"] for r in custom] == [s >= middle for s in scores]
    spread = config.score_max - config.score_min
    for record, score in zip(custom, scores):
        assert record["normalized_score"] == pytest.approx(float(np.clip((score - middle) / spread + 0.5, 0, 1)), abs=1e-5)
        assert record["image_threshold"] == middle and record["pixel_threshold"] == -1e9 and bool(record["pred_mask"].all())
    again = detect(images)
    assert [r["image_threshold"] for r in again] == [config.image_threshold] * 3
    with pytest.raises(ValueError, match="threshold=nan must be a finite number"):
        detect(images[0], threshold=float("nan"))


def test_the_pipeline_is_its_own_pipeline_sharing_the_reader():
    from transformers import Pipeline

    from adpretrain_hf.modeling.pipeline_anomaly_features import AnomalyFeaturesPipeline

    assert AnomalyDetectionPipeline.__bases__ == (Pipeline,) and not issubclass(AnomalyDetectionPipeline, AnomalyFeaturesPipeline)


def test_an_exported_graph_replaces_the_torch_forward(detect, detector_dir, tmp_path):
    from adpretrain_hf.export import export_onnx
    from adpretrain_hf.exported_detector import ExportedDetector

    runner = ExportedDetector(export_onnx(detect.model, tmp_path / "model.onnx"))
    calls = []

    def counted(pixel_values):
        calls.append(pixel_values.shape[0])
        return runner(pixel_values)

    graph = pipeline("anomaly-detection", model=str(detector_dir), device="cpu", exported=counted)
    images = _images(3, 5, sizes=[(64, 64), (80, 48), (50, 70)])
    for want, got in zip(detect(images, return_tensors="np"), graph(images, return_tensors="np", batch_size=2)):
        assert got["score"] == pytest.approx(want["score"], rel=1e-4, abs=1e-5) and got["label"] == want["label"]
        np.testing.assert_allclose(got["anomaly_map"], want["anomaly_map"], rtol=1e-4, atol=1e-4)  # at each input's size
    assert sum(calls) == 3  # every image went through the graph, none through torch
    with pytest.raises(TypeError, match="exported=str is not callable: pass ExportedDetector"):
        pipeline("anomaly-detection", model=str(detector_dir), device="cpu", exported="model.onnx")
