"""ONNX and OpenVINO export of a fitted detector's whole inference path, checked against torch.

What is exported: ``ADPretrainDetectorModel.score`` for FeatureNorm and PatchCore, i.e.
processor-normalised ``pixel_values [B, 3, H, W]`` -> backbone -> (pretrained features:
residual against the stored reference bank by exact nearest-neighbour matmul, then the
projectors) -> method scores -> upsampling, layer average, Gaussian smoothing ->
``anomaly_map [B, H, W]`` and ``scores [B]``. The reference bank and PatchCore's memory bank
are baked in as initialisers. Nothing of faiss is involved: the model's forward already uses
plain torch nearest-neighbour search (the bank is walked in fixed chunks, so only the batch
dimension is dynamic). Thresholding stays outside the graph (compare ``scores`` with
``config.image_threshold``; it is one comparison and keeps the graph recalibration-free).

PaDiM (a batched triangular solve) and the trained methods are not exported.

OpenVINO (anomalib's default deploy target): :func:`export_openvino` converts the same ONNX graph
to OpenVINO IR (``model.xml`` + ``model.bin``, dynamic batch unless fixed).

Running and checking: :class:`~adpretrain_hf.exported_detector.ExportedDetector` runs either
graph image by image (OpenVINO compiled with a static batch, in float32: OpenVINO would otherwise
pick bf16 on CPUs that have it, and the thresholds were calibrated in float32), and
:func:`check_exported` compares it with torch.

Memory: the searches in the graph walk the banks in chunks of ``matching_adpretrain.BANK_CHUNK_ROWS``
rows, so a runtime needs ``[queries, chunk]`` distances at a time, never the whole
``[queries, bank]`` matrix; fed one image at a time that stays small (``benchmarks/latency.py``
prints each runtime's peak growth; why one at a time: the runner's docstring).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .exported_detector import INPUT_NAME, OPENVINO_XML, OUTPUT_NAMES, RUNTIMES, ExportedDetector, require_openvino
from .modeling.matching_adpretrain import traced_index_style
from .modeling.modeling_detector_adpretrain import ADPretrainDetectorModel

__all__ = ["EXPORTABLE_METHODS", "FORMATS", "check_exported", "export_onnx", "export_openvino"]

EXPORTABLE_METHODS = ("featurenorm", "patchcore")
DEFAULT_OPSET = 17
FORMATS = RUNTIMES  # export formats = the runtimes that run them
# OpenVINO 2026.4 reads an opset-17 ReduceLogSumExp (PatchCore's reweighted score) as a reduction over
# every axis, ignoring its axes attribute; from opset 18 the axes are an input and convert right.
OPENVINO_OPSET = 18
# OpenVINO runs TopK cheaply and the winning-chunk search's NonZero/ScatterND dearly; onnxruntime the
# reverse (matching_adpretrain's docstring has the measurements), so each format traces its own
OPENVINO_INDEX_STYLE = "topk"


class _ScoringGraph(nn.Module):
    """The traced module: ``pixel_values`` -> ``(anomaly_map [B, H, W], score [B])`` in float32."""

    def __init__(self, detector_model: ADPretrainDetectorModel) -> None:
        super().__init__()
        self.detector_model = detector_model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, score = self.detector_model.score(pixel_values)
        return maps.float(), score.float()


def _check_exportable(detector_model: ADPretrainDetectorModel) -> None:
    if not isinstance(detector_model, ADPretrainDetectorModel):
        raise TypeError(f"export_onnx needs an ADPretrainDetectorModel (fit_detector's result), got {type(detector_model).__name__}")
    if detector_model.config.method not in EXPORTABLE_METHODS:
        raise ValueError(
            f"method {detector_model.config.method!r} does not export to ONNX: only {EXPORTABLE_METHODS} do "
            "(PaDiM's triangular solve and the trained networks stay in torch)"
        )


def export_onnx(
    detector_model: ADPretrainDetectorModel,
    path: Union[str, os.PathLike],
    *,
    batch_size: Optional[int] = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write the detector's inference graph to ``path`` (``.onnx``) and return the path.

    Args:
        batch_size: a fixed batch size, or None for a dynamic batch dimension.
        opset: ONNX opset (17 by default).
    """
    _check_exportable(detector_model)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None (dynamic), got {batch_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = detector_model.image_size
    device = detector_model.device
    example = torch.zeros(batch_size or 2, 3, height, width, device=device)
    graph = _ScoringGraph(detector_model).eval()
    dynamic = None if batch_size is not None else {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer / legacy-exporter notices about python-side shape logic
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency
        )
    return path


def export_openvino(
    detector_model: ADPretrainDetectorModel,
    folder: Union[str, os.PathLike],
    *,
    batch_size: Optional[int] = None,
    opset: int = OPENVINO_OPSET,
) -> Path:
    """Write the detector's inference graph as OpenVINO IR into ``folder`` and return ``folder/model.xml``.

    The graph is the ONNX export's (same chunked searches, their index found by ``TopK``:
    :data:`OPENVINO_INDEX_STYLE`; opset :data:`OPENVINO_OPSET`), converted by OpenVINO; ``batch_size`` None keeps the batch dimension dynamic.
    """
    ov = require_openvino()
    _check_exportable(detector_model)
    folder = Path(folder)
    if folder.suffix == ".xml":
        raise ValueError(f"OpenVINO export writes a folder (model.xml + model.bin), got the file name {folder}: pass a folder")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with traced_index_style(OPENVINO_INDEX_STYLE):
            onnx_path = export_onnx(detector_model, Path(tmp) / "model.onnx", batch_size=batch_size, opset=opset)
        model = ov.convert_model(str(onnx_path))
        xml = folder / OPENVINO_XML
        ov.save_model(model, str(xml), compress_to_fp16=False)  # float32 weights: the banks must not round
    return xml


@torch.no_grad()
def check_exported(
    detector_model: ADPretrainDetectorModel,
    path: Union[str, os.PathLike],
    pixel_values: torch.Tensor,
    runner: Optional[ExportedDetector] = None,
) -> dict[str, float]:
    """Run the exported graph at ``path`` (onnxruntime for ``.onnx``, OpenVINO for an IR folder) and
    the torch path on the same pixels.

    ``runner``: an open :class:`~adpretrain_hf.exported_detector.ExportedDetector` of ``path`` to
    reuse (a caller checking many batches opens one); None opens one here. Returns
    ``{"anomaly_map": max |diff|, "score": max |diff|, "map_scale": max |map|}``.
    """
    _check_exportable(detector_model)
    runner = ExportedDetector(path) if runner is None else runner
    maps, score = detector_model.score(pixel_values.to(detector_model.device))
    runtime_maps, runtime_score = runner(pixel_values.float().cpu().numpy())
    return {
        "anomaly_map": float(np.abs(runtime_maps - maps.float().cpu().numpy()).max()),
        "score": float(np.abs(runtime_score - score.float().cpu().numpy()).max()),
        "map_scale": float(maps.abs().max()),
    }
