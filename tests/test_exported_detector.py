"""ExportedDetector: an exported graph run image by image (micro-batches), equal to the torch detector."""

import numpy as np
import pytest
import torch

from adpretrain_hf.deployment import fit_detector
from adpretrain_hf.export import export_onnx
from adpretrain_hf.exported_detector import ExportedDetector, runtime_of

SIZE = 64  # the tiny preset's input size


def _images(n, seed):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def patchcore(tiny_clip_model):
    return fit_detector(tiny_clip_model, "patchcore", _images(6, 0), progress=False)


def _torch_outputs(model, pixels):
    with torch.no_grad():
        out = model(pixels)
    return out.anomaly_map.numpy(), out.score.numpy()


@pytest.mark.parametrize("micro_batch", [1, 2, 5])
def test_onnx_runner_equals_the_torch_detector_for_any_micro_batch(patchcore, tmp_path, micro_batch):
    path = export_onnx(patchcore, tmp_path / "model.onnx")
    runner = ExportedDetector(path, threads=1, micro_batch=micro_batch)
    assert runner.runtime == "onnx" and runner.micro_batch == micro_batch and runner.fixed_batch is None
    pixels = _images(5, 3)
    maps, scores = runner(pixels)  # a torch tensor is taken as it is
    want_maps, want_scores = _torch_outputs(patchcore, pixels)
    assert maps.shape == (5, SIZE, SIZE) and scores.shape == (5,) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, want_maps, atol=1e-4)
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)


def test_fixed_batch_onnx_pads_the_last_group_and_refuses_another_micro_batch(patchcore, tmp_path):
    path = export_onnx(patchcore, tmp_path / "fixed.onnx", batch_size=2)
    runner = ExportedDetector(path)
    assert runner.fixed_batch == 2 and runner.micro_batch == 2 and runner.pads
    pixels = _images(3, 4)  # 2 + 1: the last group is padded to 2 and its padding dropped
    maps, scores = runner(pixels.numpy())
    want_maps, want_scores = _torch_outputs(patchcore, pixels)
    assert maps.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(maps, want_maps, atol=1e-4)
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)
    with pytest.raises(ValueError, match="exported for batch 2, not micro_batch=1"):
        ExportedDetector(path, micro_batch=1)


def test_openvino_runner_compiles_a_static_batch_and_equals_torch(patchcore, tmp_path):
    pytest.importorskip("openvino")
    from adpretrain_hf.export import export_openvino

    xml = export_openvino(patchcore, tmp_path / "ov")
    runner = ExportedDetector(xml.parent, threads=1, micro_batch=2)
    assert runner.runtime == "openvino" and runner.fixed_batch is None and runner.pads
    compiled_input = runner._compiled.input(0).get_partial_shape()
    assert compiled_input.is_static and [d.get_length() for d in compiled_input] == [2, 3, SIZE, SIZE]
    pixels = _images(3, 5)  # 2 + a padded 1
    maps, scores = runner(pixels)
    want_maps, want_scores = _torch_outputs(patchcore, pixels)
    np.testing.assert_allclose(maps, want_maps, atol=1e-4)
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)


def test_bad_paths_inputs_and_micro_batches_get_clear_errors(patchcore, tmp_path):
    path = export_onnx(patchcore, tmp_path / "model.onnx")
    with pytest.raises(FileNotFoundError, match="no ONNX model at"):
        runtime_of(tmp_path / "missing.onnx")
    with pytest.raises(FileNotFoundError, match="no exported detector at"):
        ExportedDetector(tmp_path)  # a folder without model.xml
    with pytest.raises(ValueError, match="micro_batch must be >= 1"):
        ExportedDetector(path, micro_batch=0)
    runner = ExportedDetector(path)
    with pytest.raises(ValueError, match=r"takes pixel_values \[batch, 3, 64, 64\], got \[2, 3, 32, 32\]"):
        runner(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="image processor"):
        runner(np.zeros((3, SIZE, SIZE), np.float32))  # one image without its batch axis
    maps, scores = runner(np.zeros((0, 3, SIZE, SIZE), np.float32))
    assert maps.shape == (0, SIZE, SIZE) and scores.shape == (0,)
