"""ONNX and OpenVINO export of the whole inference path (FeatureNorm, PatchCore), checked with the runtimes."""

import numpy as np
import onnx
import pytest
import torch

from adpretrain_hf.deployment import fit_detector
from adpretrain_hf.export import check_exported, export_onnx
from adpretrain_hf.exported_detector import ExportedDetector, onnx_session

MAX_ABS_DIFF = 1e-4  # float32 kernels differ between torch and onnxruntime in the last bits


def _images(n, size, seed):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method,kwargs", [("featurenorm", {}), ("patchcore", {"image_score": "reweighted"})])
def test_onnx_matches_torch_with_a_dynamic_batch(tiny_clip_model, method, kwargs, tmp_path):
    model = fit_detector(tiny_clip_model, method, _images(8, 64, 0), progress=False, method_kwargs=kwargs)
    path = export_onnx(model, tmp_path / f"{method}.onnx")
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["pixel_values"]
    assert [o.name for o in graph.graph.output] == ["anomaly_map", "score"]
    if method == "patchcore":  # the memory bank is baked in as an initialiser
        bank = model.detector.memory_bank.numpy()
        assert any(np.array_equal(onnx.numpy_helper.to_array(t), bank) for t in graph.graph.initializer)
    runner = ExportedDetector(path, micro_batch=3)
    for batch in (1, 3):  # exported with batch 2: the batch axis is dynamic; batch 3 reuses an open runner
        diffs = check_exported(model, path, _images(batch, 64, batch), runner=runner if batch == 3 else None)
        assert diffs["anomaly_map"] <= MAX_ABS_DIFF * max(1.0, diffs["map_scale"]) and diffs["score"] <= MAX_ABS_DIFF * max(1.0, diffs["map_scale"])
    # Independent of check_exported: run the session by hand against the detector model's forward.
    test = _images(2, 64, 9)
    onnx_map, onnx_scores = onnx_session(path).run(None, {"pixel_values": test.numpy()})
    out = model(test)
    assert onnx_map.shape == (2, 64, 64) and onnx_scores.shape == (2,)
    assert np.allclose(onnx_map, out.anomaly_map.numpy(), atol=1e-4) and np.allclose(onnx_scores, out.score.numpy(), atol=1e-4)


def test_fixed_batch_and_unsupported_methods(tiny_clip_model, tmp_path):
    model = fit_detector(tiny_clip_model, "featurenorm", _images(4, 64, 0), progress=False)
    path = export_onnx(model, tmp_path / "fixed.onnx", batch_size=1)
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 1
    padim = fit_detector(tiny_clip_model, "padim", _images(4, 64, 0), progress=False)
    with pytest.raises(ValueError, match="does not export to ONNX"):
        export_onnx(padim, tmp_path / "padim.onnx")


@pytest.mark.parametrize("method", ["featurenorm", "patchcore"])
def test_openvino_matches_torch_with_a_dynamic_batch(tiny_clip_model, method, tmp_path):
    pytest.importorskip("openvino")
    from adpretrain_hf.export import export_openvino
    from adpretrain_hf.exported_detector import openvino_compiled

    model = fit_detector(tiny_clip_model, method, _images(6, 64, 0), progress=False)
    xml = export_openvino(model, tmp_path / method)
    assert xml.name == "model.xml" and xml.with_suffix(".bin").is_file()
    compiled = openvino_compiled(xml.parent, threads=1)
    for batch in (1, 3):  # the batch axis stays dynamic
        diffs = check_exported(model, xml.parent, _images(batch, 64, batch), runner=ExportedDetector(xml, micro_batch=batch))
        assert diffs["anomaly_map"] <= MAX_ABS_DIFF * max(1.0, diffs["map_scale"]) and diffs["score"] <= MAX_ABS_DIFF * max(1.0, diffs["map_scale"])
    # Independent of check_exported: the compiled model by hand against the detector model's forward.
    test = _images(2, 64, 9)
    result = compiled({"pixel_values": test.numpy()})
    out = model(test)
    ov_map, ov_scores = result[compiled.output("anomaly_map")], result[compiled.output("score")]
    assert ov_map.shape == (2, 64, 64) and ov_scores.shape == (2,)
    assert np.allclose(ov_map, out.anomaly_map.numpy(), atol=1e-4) and np.allclose(ov_scores, out.score.numpy(), atol=1e-4)


def test_openvino_export_refuses_a_file_name_and_a_missing_model(tiny_clip_model, tmp_path):
    pytest.importorskip("openvino")
    from adpretrain_hf.export import export_openvino
    from adpretrain_hf.exported_detector import openvino_compiled

    model = fit_detector(tiny_clip_model, "featurenorm", _images(4, 64, 0), progress=False)
    with pytest.raises(ValueError, match="writes a folder"):
        export_openvino(model, tmp_path / "model.xml")
    with pytest.raises(FileNotFoundError, match="no OpenVINO model at"):
        openvino_compiled(tmp_path / "nothing")
