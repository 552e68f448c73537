"""``pipeline("anomaly-detection")``: images in; a fitted detector's decision per image out.

    detect = pipeline("anomaly-detection", model=detector_dir)   # a folder written by `adpretrain fit`
    out = detect(image)   # {"score", "normalized_score", "label", "anomaly_map" [H, W], "pred_mask" [H, W]}

Why a pipeline: a fitted ``ADPretrainDetectorModel`` scores processor-sized pixel values; an
inspection line has image files of any size. The pipeline reads them (PIL / path / numpy,
grayscale / RGBA, like ``anomaly-features``), batches them through the detector, and maps the
anomaly map back onto each input image (the processor's resize + center crop undone).

Per image: ``score`` (float, raw), ``normalized_score`` (float in [0, 1], threshold at 0.5),
``label`` (bool, anomalous), ``anomaly_map`` (``[H, W]`` float32 at the input's own size) and
``pred_mask`` (``[H, W]`` bool, ``anomaly_map >= config.pixel_threshold``). The calibrated
fields are None for a detector fitted without validation images.

Precision: float32 by default on every device, because the thresholds were calibrated on
float32 scores; ``dtype=torch.bfloat16`` is accepted but shifts scores against them.

Part of the remote-code bundle (the detector folder's ``custom_pipelines``): imports only
torch / transformers / numpy / PIL and its siblings relatively.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .dtypes_adpretrain import dtype_from_name
from .image_processing_adpretrain import ADPretrainImageProcessor, processor_for
from .pipeline_anomaly_features import _LENIENT_KWARGS, AnomalyFeaturesPipeline, map_to_image

OUTPUTS = ("score", "normalized_score", "label", "anomaly_map", "pred_mask")
# model output fields batched as they are named (only those the model filled)
_BATCHED_FIELDS = ("anomaly_map", "score", "normalized_score", "label")


def _detector_processor(model: Any) -> ADPretrainImageProcessor:
    """The processor saved in the detector folder, else the one its feature model implies (``processor_for``)."""
    if getattr(model, "adpretrain", None) is None:
        raise ValueError(
            f"the anomaly-detection pipeline needs a fitted ADPretrainDetectorModel, got {type(model).__name__}: "
            "fit one with `adpretrain fit ...` or adpretrain_hf.fit_detector(...)"
        )
    return processor_for(model, warn_missing=False)


def _resolve_dtype(dtype: Any) -> Optional[torch.dtype]:
    """None/"auto" -> float32 (the calibration's precision); else a torch dtype or a name of ``DTYPES``."""
    return torch.float32 if dtype is None or dtype == "auto" else dtype_from_name(dtype)


class AnomalyDetectionPipeline(AnomalyFeaturesPipeline):
    """Task ``anomaly-detection``: see the module docstring.

    Shares input reading (``__call__``, ``preprocess``: PIL / path / numpy -> pixel values and
    the original size) with ``anomaly-features``; the model call and the outputs are its own.
    Call options: ``return_tensors`` (``"pt"`` default | ``"np"``), ``batch_size``,
    ``num_workers``. Constructor: ``device``, ``dtype`` (float32 unless told otherwise).
    """

    _load_image_processor = False  # processor_for: the detector folder's, else its feature model's (in-memory too)

    def __init__(self, model: Any, image_processor: Any = None, dtype: Any = None, **kwargs: Any) -> None:
        if image_processor is None:
            image_processor = _detector_processor(model)
        super().__init__(model, image_processor=image_processor, dtype=_resolve_dtype(dtype), **kwargs)

    def _smallest_stride(self) -> int:
        return int(self.model.adpretrain.backbone.smallest_stride)

    def _sanitize_parameters(self, return_tensors=None, **kwargs):
        unknown = sorted(set(kwargs) - set(_LENIENT_KWARGS))
        if unknown:
            raise TypeError(
                f"unknown option(s) {unknown} for the anomaly-detection pipeline: it takes return_tensors, "
                "batch_size, num_workers (and device/dtype when built)"
            )
        post = {}
        if return_tensors is not None:
            if return_tensors not in ("pt", "np"):
                raise ValueError(f"return_tensors={return_tensors!r}: use 'pt' (torch) or 'np' (numpy)")
            post["return_tensors"] = return_tensors
        return {}, {}, post

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batched detector call -> a flat dict of ``[B, ...]`` tensors (what the un-batcher splits)."""
        result = self.model(model_inputs["pixel_values"].to(self.model.dtype))
        flat = {"original_size": model_inputs["original_size"]}
        for field in _BATCHED_FIELDS:
            value = getattr(result, field)
            if value is not None:
                flat[field] = value.float() if value.is_floating_point() else value
        return flat

    def postprocess(self, model_outputs: dict[str, torch.Tensor], return_tensors: str = "pt") -> dict[str, Any]:
        """Un-batched ``[1, ...]`` tensors -> the per-image dict, maps at the input's own size."""
        height, width = (int(v) for v in model_outputs["original_size"][0])
        anomaly_map = map_to_image(model_outputs["anomaly_map"][0], self.image_processor, (height, width))
        threshold = self.model.config.pixel_threshold
        record = {
            "score": float(model_outputs["score"].reshape(-1)[0]),
            "normalized_score": float(model_outputs["normalized_score"].reshape(-1)[0]) if "normalized_score" in model_outputs else None,
            "label": bool(model_outputs["label"].reshape(-1)[0]) if "label" in model_outputs else None,
            "anomaly_map": anomaly_map,
            "pred_mask": anomaly_map >= threshold if threshold is not None else None,
        }
        if return_tensors == "np":
            record = {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in record.items()}
        return record


__all__ = ["AnomalyDetectionPipeline", "OUTPUTS"]
