"""ONNX export of a fitted detector's whole inference path, checked against torch.

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

Memory: onnxruntime's peak grows with the whole ``[queries, reference tokens]`` distance matrix
of the residual matching (torch eager holds one 1024-column block at a time). Harmless for ViT
grids (16x16 tokens); for high-resolution CNN grids it is not: EfficientNet-Lite0 at 224 px
(56x56 first layer) needs about 0.3 GB at batch 1 but more than 9 GB at batch 16. Export such
models with a small fixed ``batch_size`` (1-4).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from .modeling.modeling_detector_adpretrain import ADPretrainDetectorModel

__all__ = ["EXPORTABLE_METHODS", "check_onnx", "export_onnx"]

EXPORTABLE_METHODS = ("featurenorm", "patchcore")
DEFAULT_OPSET = 17
INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("anomaly_map", "score")  # the detector output's field names: [B, H, W], [B]


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


def onnx_session(path: Union[str, os.PathLike], threads: Optional[int] = None):
    """An ``onnxruntime.InferenceSession`` on the CPU (``threads`` intra-op threads, default: ORT's)."""
    try:
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover - onnxruntime is installed where export is used
        raise ImportError("checking an ONNX export needs onnxruntime: pip install onnxruntime") from err
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_onnx(
    detector_model: ADPretrainDetectorModel, path: Union[str, os.PathLike], pixel_values: torch.Tensor, session: Any = None
) -> dict[str, float]:
    """Run the exported graph (onnxruntime, CPU) and the torch path on the same pixels.

    ``session``: an open :func:`onnx_session` of ``path`` to reuse (a caller checking many batches
    opens one); None opens one here. Returns ``{"anomaly_map": max |diff|, "score": max |diff|,
    "map_scale": max |map|}``.
    """
    _check_exportable(detector_model)
    maps, score = detector_model.score(pixel_values.to(detector_model.device))
    session = onnx_session(path) if session is None else session
    onnx_maps, onnx_score = session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixel_values.float().cpu().numpy()})
    return {
        "anomaly_map": float(np.abs(onnx_maps - maps.float().cpu().numpy()).max()),
        "score": float(np.abs(onnx_score - score.float().cpu().numpy()).max()),
        "map_scale": float(maps.abs().max()),
    }
