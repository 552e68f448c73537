"""``pipeline("anomaly-detection")``: images in; a fitted detector's decision per image out.

    detect = pipeline("anomaly-detection", model=detector_dir)   # a folder written by `adpretrain fit`
    out = detect(image)   # {"score", "normalized_score", "label", "anomaly_map" [H, W], "pred_mask" [H, W], ...}
    out = detect(image, threshold=0.1)   # this call's image threshold instead of the calibrated one

Why a pipeline: a fitted ``ADPretrainDetectorModel`` scores processor-sized pixel values; an
inspection line has image files of any size. The pipeline reads them (PIL / path / numpy,
grayscale / RGBA, like ``anomaly-features``), batches them through the detector, and maps the
anomaly map back onto each input image (the processor's resize + center crop undone).

Per image: ``score`` (float, raw), ``normalized_score`` (float in [0, 1], the image threshold
at 0.5), ``label`` (bool, ``score >= image_threshold``), ``anomaly_map`` (``[H, W]`` float32 at
the input's own size, or the reader's reduced size for a very large file), ``pred_mask``
(``[H, W]`` bool, ``anomaly_map >= pixel_threshold``), and the two thresholds used
(``image_threshold``, ``pixel_threshold``). The thresholds are the calibrated ones
(``config.image_threshold`` / ``config.pixel_threshold``) unless the call passes
``threshold=`` / ``pixel_threshold=``; without either, a detector fitted without validation
images gives None for ``label`` / ``normalized_score`` / ``pred_mask``.

Image label and pixel mask answer different questions with different thresholds: an image
can be anomalous (its score, e.g. the map's maximum or a mean of top values, passes the image
threshold) while no pixel passes the pixel threshold, and the reverse.

Exported graph (``exported=``): an ``adpretrain_hf.exported_detector.ExportedDetector`` of the
same detector (or any callable ``pixel_values [B, 3, H, W]`` numpy -> ``(anomaly_map [B, H, W],
score [B])``) replaces the torch forward; reading, mapping back and thresholds stay the pipeline's.
OpenVINO on EfficientNet-Lite0 at 224 px ran the pretrained PatchCore about 1.5x faster than
eager torch on one CPU thread (``benchmarks/latency.py``).

Precision: float32 by default on every device, because the thresholds were calibrated on
float32 scores; ``dtype=torch.bfloat16`` is accepted but shifts scores against them.

Part of the remote-code bundle (the detector folder's ``custom_pipelines``): imports only
torch / transformers / numpy / PIL and its siblings relatively.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch

from transformers import Pipeline

from .calibration_adpretrain import normalize_scores
from .dtypes_adpretrain import dtype_from_name
from .image_processing_adpretrain import ADPretrainImageProcessor, processor_for
from .pipeline_anomaly_features import _LENIENT_KWARGS, check_inputs, map_to_image, model_inputs_of

OUTPUTS = ("score", "normalized_score", "label", "anomaly_map", "pred_mask", "image_threshold", "pixel_threshold")
# model output fields batched as they are named (labels are decided in postprocess, per call)
_BATCHED_FIELDS = ("anomaly_map", "score")


def _detector_processor(model: Any) -> ADPretrainImageProcessor:
    """The processor saved in the detector folder, else the one its feature model implies (``processor_for``)."""
    if getattr(model, "adpretrain", None) is None:
        raise ValueError(
            f"the anomaly-detection pipeline needs a fitted ADPretrainDetectorModel, got {type(model).__name__}: "
            "fit one with `adpretrain fit ...` or adpretrain_hf.fit_detector(...)"
        )
    return processor_for(model, warn_missing=False)


def _threshold(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number (a raw {'score' if name == 'threshold' else 'map value'})")
    return float(value)


class AnomalyDetectionPipeline(Pipeline):
    """Task ``anomaly-detection``: see the module docstring.

    Reads images like ``anomaly-features`` (the shared ``model_inputs_of``: PIL / path / numpy ->
    pixel values and the original size). Call options: ``threshold`` (image threshold on the raw
    score), ``pixel_threshold`` (on map values), ``return_tensors`` (``"pt"`` default | ``"np"``),
    ``batch_size``, ``num_workers``. Constructor: ``device``, ``dtype`` (float32 unless told otherwise),
    ``exported`` (a runner of the exported graph to score with instead of torch; module docstring).
    """

    _load_image_processor = False  # processor_for: the detector folder's, else its feature model's (in-memory too)
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_processor = False
    _load_video_processor = False

    def __init__(self, model: Any, image_processor: Any = None, dtype: Any = None, exported: Any = None, **kwargs: Any) -> None:
        if exported is not None and not callable(exported):
            raise TypeError(
                f"exported={type(exported).__name__} is not callable: pass ExportedDetector(path) "
                "(adpretrain_hf.exported_detector) of this detector's exported graph"
            )
        self.exported = exported
        if image_processor is None:
            image_processor = _detector_processor(model)
        elif isinstance(image_processor, (str, os.PathLike)):
            image_processor = ADPretrainImageProcessor.from_pretrained(image_processor)
        super().__init__(model, image_processor=image_processor, **kwargs)
        # None/"auto": float32 (the calibration's precision); else a torch dtype or a name of DTYPES
        target = torch.float32 if dtype is None or dtype == "auto" else dtype_from_name(dtype)
        if target != self.model.dtype:
            self.model.to(target)

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        """One image -> one dict; a list (or tuple) of images -> a list of dicts."""
        return super().__call__(check_inputs(inputs), **kwargs)

    def _sanitize_parameters(self, threshold=None, pixel_threshold=None, return_tensors=None, **kwargs):
        unknown = sorted(set(kwargs) - set(_LENIENT_KWARGS))
        if unknown:
            raise TypeError(
                f"unknown option(s) {unknown} for the anomaly-detection pipeline: it takes threshold, pixel_threshold, "
                "return_tensors, batch_size, num_workers (and device/dtype when built)"
            )
        post = {}
        if threshold is not None:
            post["threshold"] = _threshold(threshold, "threshold")
        if pixel_threshold is not None:
            post["pixel_threshold"] = _threshold(pixel_threshold, "pixel_threshold")
        if return_tensors is not None:
            if return_tensors not in ("pt", "np"):
                raise ValueError(f"return_tensors={return_tensors!r}: use 'pt' (torch) or 'np' (numpy)")
            post["return_tensors"] = return_tensors
        return {}, {}, post

    def preprocess(self, image: Any) -> dict[str, torch.Tensor]:
        return model_inputs_of(image, self.image_processor, int(self.model.adpretrain.backbone.smallest_stride))

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batched detector call -> a flat dict of ``[B, ...]`` tensors (what the un-batcher splits)."""
        flat = {"original_size": model_inputs["original_size"]}
        if self.exported is not None:  # the exported graph scores: float32 numpy in and out
            outputs = self.exported(model_inputs["pixel_values"].float().cpu().numpy())
            for field, value in zip(_BATCHED_FIELDS, outputs):
                flat[field] = torch.as_tensor(value).float()
            return flat
        result = self.model(model_inputs["pixel_values"].to(self.model.dtype))
        for field in _BATCHED_FIELDS:
            flat[field] = getattr(result, field).float()
        return flat

    def postprocess(self, model_outputs: dict[str, torch.Tensor], threshold: Optional[float] = None,
                    pixel_threshold: Optional[float] = None, return_tensors: str = "pt") -> dict[str, Any]:
        """Un-batched ``[1, ...]`` tensors -> the per-image dict, maps at the input's own size."""
        config = self.model.config
        height, width = (int(v) for v in model_outputs["original_size"][0])
        anomaly_map = map_to_image(model_outputs["anomaly_map"][0], self.image_processor, (height, width))
        score = model_outputs["score"].reshape(-1)[0]
        image_threshold = threshold if threshold is not None else config.image_threshold
        pixel_threshold = pixel_threshold if pixel_threshold is not None else config.pixel_threshold
        normalized = None
        if image_threshold is not None:
            low = config.score_min if config.score_min is not None else image_threshold
            high = config.score_max if config.score_max is not None else image_threshold
            normalized = float(normalize_scores(score, image_threshold, low, high))
        record = {
            "score": float(score),
            "normalized_score": normalized,
            "label": bool(score >= image_threshold) if image_threshold is not None else None,
            "anomaly_map": anomaly_map,
            "pred_mask": anomaly_map >= pixel_threshold if pixel_threshold is not None else None,
            "image_threshold": image_threshold,
            "pixel_threshold": pixel_threshold,
        }
        if return_tensors == "np":
            record = {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in record.items()}
        return record


__all__ = ["AnomalyDetectionPipeline", "OUTPUTS"]
