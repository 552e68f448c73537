"""Fitting, wrapping and calibrating detectors as deployable ``ADPretrainDetectorModel`` folders.

The evaluation code fits detectors to measure them; an inspection line needs one fitted
detector it can keep, ship and trust: one folder (``save_pretrained``), a decision threshold,
a normalised score and a predicted mask. This module is that path::

    detector = fit_detector("ckpt", "patchcore", train_images, val_images=normal_val)
    detector.save_pretrained("patchcore-screws")
    out = ADPretrainDetectorModel.from_pretrained("patchcore-screws")(pixel_values)
    out.label, out.normalized_score, out.pred_mask

Images are PIL images, paths or numpy arrays (through the model's image processor), or an
already processed ``[N, 3, H, W]`` tensor. Thresholds are fitted on the detector *model's*
own outputs (the deployed path), never on the fitting code's.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .detectors import build_detector
from .detectors.base import Detector, FeatureMapDetector
from .detectors.layers import LayerSelectingExtractor
from .extractor import ModelFeatureExtractor
from .modeling.calibration_adpretrain import DEFAULT_QUANTILE, check_threshold_arguments, fit_threshold, score_range
from .modeling.configuration_detector_adpretrain import ADPretrainDetectorConfig
from .modeling.image_processing_adpretrain import ADPretrainImageProcessor, processor_for
from .modeling.modeling_adpretrain import ADPretrainModel
from .modeling.modeling_detector_adpretrain import REFERENCE_BANK_PREFIX, ADPretrainDetectorModel
from .modeling.image_io_adpretrain import read_image

__all__ = ["calibrate", "detector_to_model", "fit_detector", "load_pixel_values", "predict_maps"]

DEFAULT_REFERENCE_SHOTS = 8  # references default to the first this-many training images (the paper's 8-shot set)

Images = Union[torch.Tensor, Sequence[Any], Any]


def load_pixel_values(images: Images, processor: ADPretrainImageProcessor, what: str = "images") -> torch.Tensor:
    """PIL images / paths / numpy arrays (one or a list) -> ``[N, 3, H, W]``; a tensor passes through."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{what} tensor must be processed pixel values [N, 3, H, W], got {tuple(images.shape)}: pass PIL images or paths instead")
        return images.float()
    if images is None:
        raise ValueError(f"no {what} given: pass PIL images, paths or numpy arrays")
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if len(items) == 0:
        raise ValueError(f"no {what} given: the list is empty")
    rgb = [read_image(item, what[:-1] if what.endswith("s") else what) for item in items]
    return processor(rgb, return_tensors="pt")["pixel_values"].float()


def _load_masks(masks: Any, processor: ADPretrainImageProcessor, count: int) -> torch.Tensor:
    """Masks (PIL / numpy / None for a normal image, or a tensor ``[N, H, W]``) -> ``[N, H, W]`` {0, 1}."""
    if isinstance(masks, torch.Tensor):
        out = masks.reshape(masks.shape[0], *masks.shape[-2:]).float()
    else:
        items = list(masks)
        height, width = processor.output_size
        present = [i for i, m in enumerate(items) if m is not None]
        out = torch.zeros(len(items), height, width)
        if present:
            out[present] = processor.preprocess_masks([items[i] for i in present])
    if out.shape[0] != count:
        raise ValueError(f"{out.shape[0]} masks for {count} validation images: give one mask per image (None for a normal one)")
    return out


@torch.no_grad()
def predict_maps(
    detector_model: ADPretrainDetectorModel, pixel_values: torch.Tensor, batch_size: int = 32, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw ``(anomaly maps [N, H, W], scores [N])`` of a detector model, on the CPU, in batches."""
    maps, scores = [], []
    starts = range(0, pixel_values.shape[0], batch_size)
    for start in tqdm(starts, desc="detector: score", disable=not progress, leave=False):
        batch_maps, batch_scores = detector_model.score(pixel_values[start : start + batch_size].to(detector_model.device))
        maps.append(batch_maps.float().cpu())
        scores.append(batch_scores.float().cpu())
    return torch.cat(maps), torch.cat(scores)


def detector_to_model(detector: Detector, feature_source: Optional[str] = None) -> ADPretrainDetectorModel:
    """Wrap a fitted detector (on a ``ModelFeatureExtractor``) as an ``ADPretrainDetectorModel``.

    The extractor's ADPretrain model is shared, not copied. The detector's module is rebuilt
    from its settings (as a loaded folder rebuilds it) and its fitted state copied in; for
    pretrained features the reference bank (backbone tokens of the normal references) is stored
    for the used layers.
    """
    extractor, selected = detector.extractor, None
    if isinstance(extractor, LayerSelectingExtractor):  # a trained detector's layer_positions= (resolved at fit)
        extractor, selected = extractor.inner, extractor.resolved_positions
    if not isinstance(extractor, ModelFeatureExtractor):
        raise TypeError(
            f"detector_to_model needs a detector on a ModelFeatureExtractor (it bundles the model), got {type(extractor).__name__}: "
            "build the detector with ModelFeatureExtractor(model, feature_kind=...)"
        )
    if not detector.is_fitted:
        raise RuntimeError(f"{type(detector).__name__} is not fitted: call fit(normal_images) first")
    module = detector.module
    settings, tensors = module.settings(), {k: v.detach() for k, v in module.fitted_tensors().items()}
    model = extractor.model
    if isinstance(detector, FeatureMapDetector):
        selected = detector.used_layer_positions()
    elif selected is None:
        selected = list(range(len(extractor.layer_positions)))
    positions = [extractor.layer_positions[i] for i in selected]  # in the model's list of tapped layers
    needs_bank = extractor.feature_kind == "pretrained" and extractor.needs_references
    if needs_bank:
        bank = extractor.reference_bank()  # raises, naming the fix, when no references were given
        tensors.update({f"{REFERENCE_BANK_PREFIX}{position}": bank.layers[position] for position in positions})
    source = feature_source or getattr(model, "name_or_path", None) or None
    config = ADPretrainDetectorConfig(
        method=detector.name,
        method_settings=settings,
        feature_kind=extractor.feature_kind,
        layer_positions=positions,
        feature_source=source,
        adpretrain_config=model.config,
        fitted_shapes={k: list(v.shape) for k, v in tensors.items()},
        fitted_dtypes={k: str(v.dtype).replace("torch.", "") for k, v in tensors.items() if v.dtype != torch.float32},
    )
    detector_model = ADPretrainDetectorModel(config, adpretrain_model=model)
    device = next(model.parameters()).device
    detector_model.detector.load_state_dict(module.state_dict())
    for name, value in tensors.items():
        if name.startswith(REFERENCE_BANK_PREFIX):
            getattr(detector_model.references, name).copy_(value)
    detector_model.detector.to(device)
    detector_model.references.to(device)
    detector_model.check_fitted()
    return detector_model.eval()


def calibrate(
    detector_model: ADPretrainDetectorModel,
    val_images: Images,
    labels: Optional[Sequence[int]] = None,
    masks: Optional[Any] = None,
    quantile: float = DEFAULT_QUANTILE,
    margin: float = 0.0,
    batch_size: int = 32,
    progress: bool = True,
) -> ADPretrainDetectorModel:
    """(Re)fit the image and pixel thresholds and the score range on validation images (in place).

    - ``labels=None``: all images are normal; image threshold = ``quantile`` of their scores
      (+ ``margin`` x range), pixel threshold = ``quantile`` of all their map values.
    - labels with both classes: image threshold maximising F1; with ``masks`` too, pixel
      threshold maximising pixel F1 (else the ``quantile`` of the normal images' pixels).
    Normalisation uses min/max of all validation scores.
    """
    processor = processor_for(detector_model)  # the detector folder's, else its feature model's
    pixel_values = load_pixel_values(val_images, processor, "val_images")
    maps, scores = predict_maps(detector_model, pixel_values, batch_size, progress)
    truth = None
    if labels is not None:
        truth = torch.as_tensor(list(labels) if not isinstance(labels, torch.Tensor) else labels).reshape(-1).bool()
        if truth.numel() != scores.numel():
            raise ValueError(f"{truth.numel()} labels for {scores.numel()} validation images: give one label (0 normal, 1 anomalous) per image")
    image_threshold, how = fit_threshold(scores, truth, quantile, margin)
    if masks is not None and how == "f1":
        pixel_truth = _load_masks(masks, processor, scores.numel()).bool()
        if pixel_truth.shape[-2:] != maps.shape[-2:]:
            raise ValueError(f"masks are {tuple(pixel_truth.shape[-2:])} but the maps {tuple(maps.shape[-2:])}: pass the original masks, not resized ones")
        pixel_threshold, _ = fit_threshold(maps, pixel_truth, quantile)
    else:
        normal = maps if truth is None else maps[~truth]
        pixel_threshold, _ = fit_threshold(normal, None, quantile)
    low, high = score_range(scores)
    config = detector_model.config
    config.image_threshold, config.pixel_threshold = image_threshold, pixel_threshold
    config.score_min, config.score_max, config.calibration = low, high, how
    return detector_model


def _resolve_model(model: Union[ADPretrainModel, str, os.PathLike], device: Optional[Union[str, torch.device]]) -> tuple[ADPretrainModel, Optional[str]]:
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        model = ADPretrainModel.from_pretrained(source)
    elif isinstance(model, ADPretrainModel):
        source = getattr(model, "name_or_path", None) or None
    else:
        raise TypeError(f"model must be an ADPretrainModel or a checkpoint folder / Hub id, got {type(model).__name__}")
    if device is not None:
        model.to(device)
    return model.eval(), source


def fit_detector(
    model: Union[ADPretrainModel, str],
    method: str,
    train_images: Images,
    *,
    feature_kind: str = "pretrained",
    layer_positions: Optional[Sequence[int]] = None,
    references: Optional[Images] = None,
    val_images: Optional[Images] = None,
    val_labels: Optional[Sequence[int]] = None,
    val_masks: Optional[Any] = None,
    quantile: float = DEFAULT_QUANTILE,
    margin: float = 0.0,
    method_kwargs: Optional[dict] = None,
    device: Optional[Union[str, torch.device]] = None,
    batch_size: int = 32,
    progress: bool = True,
) -> ADPretrainDetectorModel:
    """Fit ``method`` on normal ``train_images`` and return a deployable detector model.

    Args:
        model: an ``ADPretrainModel`` or its checkpoint folder / Hub id (recorded as the feature source).
        method: ``"featurenorm" | "patchcore" | "padim" | "cflow" | "glass" | "uniad"``.
        feature_kind: ``"pretrained"`` (ADPretrain, "w/") or ``"backbone"`` ("w/o").
        layer_positions: 0-based positions in the model's list of tapped layers (None: the method's
            default).
        references: normal reference images for the residuals (default: the first 8 training images);
            they become the extractor's reference bank and are stored in the folder. A training image
            that is also a reference is matched against the other references only (leave-one-out).
        val_images / val_labels / val_masks: calibration set (see :func:`calibrate`); None leaves it uncalibrated.
        quantile / margin: normal-only image threshold = ``quantile`` of the scores + ``margin`` x their range
            (``quantile=1.0, margin=0.1``: "max + 10 %"); the pixel threshold uses ``quantile`` alone.
        method_kwargs: extra detector options (e.g. ``{"coreset_ratio": 0.1}``, ``{"quick": True}``).
    """
    if val_images is None and (val_labels is not None or val_masks is not None):  # before the fit, not after it
        raise ValueError("val_labels / val_masks given without val_images: pass the validation images too")
    check_threshold_arguments(quantile, margin)  # a NaN margin is an argument error, not a NaN threshold after the fit
    model, source = _resolve_model(model, device)
    processor = processor_for(model)  # saved with the checkpoint, else the config's; the detector saves it
    train = load_pixel_values(train_images, processor, "train_images")
    extractor = ModelFeatureExtractor(model, feature_kind=feature_kind)
    if extractor.needs_references:
        refs = train[:DEFAULT_REFERENCE_SHOTS] if references is None else load_pixel_values(references, processor, "references")
        extractor.set_references(refs)
    kwargs = dict(method_kwargs or {})
    if layer_positions is not None:
        kwargs["layer_positions"] = list(layer_positions)
    detector = build_detector(method, extractor, batch_size=batch_size, progress=progress, **kwargs)
    detector.fit(train)
    detector_model = detector_to_model(detector, feature_source=source)
    if val_images is not None:
        calibrate(detector_model, val_images, val_labels, val_masks, quantile, margin, batch_size=batch_size, progress=progress)
    return detector_model
