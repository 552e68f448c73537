"""`adpretrain export`: the ONNX file it writes computes what the torch detector computes (checked here
with onnxruntime directly), and it prints the parity it measured."""

import re

import numpy as np
import pytest
import torch

from adpretrain_hf.cli import main
from adpretrain_hf.modeling.image_processing_adpretrain import processor_for
from adpretrain_hf.modeling.modeling_detector_adpretrain import ADPretrainDetectorModel

BATCH = 2


def test_the_onnx_file_matches_the_torch_detector(featurenorm, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    target = tmp_path / "fn.onnx"
    assert main(["export", "--detector", str(featurenorm), "--output", str(target), "--batch-size", str(BATCH)]) == 0
    out = capsys.readouterr().out
    assert f"featurenorm detector exported to {target}" in out and f"batch {BATCH}" in out
    printed = [float(v) for v in re.findall(r"max \|d (?:anomaly_map|score)\| = ([0-9.e+-]+)", out)]
    assert len(printed) == 2 and max(printed) < 1e-3

    detector = ADPretrainDetectorModel.from_pretrained(featurenorm).eval()
    height, width = processor_for(detector).output_size
    pixel_values = torch.randn(BATCH, 3, height, width, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        maps, scores = detector.score(pixel_values)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    onnx_map, onnx_score = session.run(None, {session.get_inputs()[0].name: pixel_values.numpy()})
    np.testing.assert_allclose(onnx_map, maps.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(onnx_score, scores.numpy(), rtol=1e-3, atol=1e-4)


def test_the_default_target_is_inside_the_detector_folder(featurenorm, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", "--detector", str(featurenorm)]) == 0
    assert (featurenorm / "model.onnx").is_file() and "batch dynamic" in capsys.readouterr().out


def test_an_unknown_format_is_a_usage_error(featurenorm):
    with pytest.raises(SystemExit) as info:
        main(["export", "--detector", str(featurenorm), "--format", "tflite"])
    assert info.value.code == 2


def test_the_torch_free_opset_copy_matches_the_exporter():
    from adpretrain_hf import export
    from adpretrain_hf.commands import export as export_command

    assert export_command.DEFAULT_OPSET == export.DEFAULT_OPSET


def test_openvino_export_matches_the_torch_detector(featurenorm, tmp_path, capsys):
    pytest.importorskip("openvino")
    from adpretrain_hf.exported_detector import openvino_compiled

    target = tmp_path / "ov"
    assert main(["export", "--detector", str(featurenorm), "--format", "openvino", "--output", str(target)]) == 0
    out = capsys.readouterr().out
    assert f"exported to {target / 'model.xml'}" in out and "openvino vs torch" in out and "opset 18" in out
    printed = [float(v) for v in re.findall(r"max \|d (?:anomaly_map|score)\| = ([0-9.e+-]+)", out)]
    assert len(printed) == 2 and max(printed) < 1e-3
    detector = ADPretrainDetectorModel.from_pretrained(featurenorm).eval()
    height, width = processor_for(detector).output_size
    pixel_values = torch.randn(3, 3, height, width, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        maps, scores = detector.score(pixel_values)
    compiled = openvino_compiled(target)
    result = compiled({"pixel_values": pixel_values.numpy()})
    np.testing.assert_allclose(result[compiled.output("anomaly_map")], maps.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(result[compiled.output("score")], scores.numpy(), rtol=1e-3, atol=1e-4)


def test_the_torch_free_openvino_opset_copy_matches_the_exporter():
    from adpretrain_hf import export
    from adpretrain_hf.commands import export as export_command

    assert export_command.OPENVINO_OPSET == export.OPENVINO_OPSET and export_command.FORMATS == export.FORMATS
