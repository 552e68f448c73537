"""``ADPretrainImageProcessor``: one geometry for images and masks.

Resize the shorter side to the preset size (bicubic), center crop, rescale to [0, 1],
normalise with the preset's mean/std (CLIP statistics for CLIP/ImageBind, ImageNet for
DINOv2). Masks go through the *same* resize/crop with nearest interpolation and are
binarised, so an image and its mask can never drift apart (the authors' release resized
test images to 256/crop 224 but references to 224; we use one geometry everywhere).

The PIL backend is pinned (transformers would otherwise pick the torchvision backend when
it is installed, whose pixels differ by up to 0.015).

:func:`processor_for` is the one answer to "which processor goes with this model": the
``preprocessor_config.json`` saved with it (an edited mean/std/resample is used), else the
config's default. Pipelines, evaluation, deployment, training and saving all ask it.

Part of the remote-code bundle.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling

from .image_io_adpretrain import UINT8_MAX, read_mask
from .presets_adpretrain import CLIP_MEAN, CLIP_STD

PROCESSOR_FILE = "preprocessor_config.json"
# where from_pretrained keeps the processor a checkpoint was loaded with (None: it had none)
SAVED_PROCESSOR_ATTR = "_adpretrain_saved_processor"
HUB_DOWNLOAD_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def hub_download_kwargs(kwargs: dict) -> dict:
    """The download options among ``from_pretrained``'s kwargs (the rest are model/config overrides)."""
    return {k: kwargs[k] for k in HUB_DOWNLOAD_KWARGS if k in kwargs}


def resolve_file(path_or_id: Any, filename: str, kwargs: dict) -> Optional[str]:
    """Local path of ``filename`` in a folder (and ``subfolder``) or a (cached) Hub repo; None when absent.

    ``kwargs``: ``from_pretrained``'s kwargs; only the download options are passed on. A missing
    file or no connection is "absent", so callers fall back instead of failing.
    """
    if os.path.isdir(str(path_or_id)):
        candidate = os.path.join(str(path_or_id), kwargs.get("subfolder") or "", filename)
        return candidate if os.path.isfile(candidate) else None
    from transformers.utils import cached_file

    return cached_file(
        path_or_id, filename, _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False, **hub_download_kwargs(kwargs),
    )


class ADPretrainImageProcessor(PilBackend):
    """Image processor of ADPretrain checkpoints (also serves masks: :meth:`preprocess_masks`)."""

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = list(CLIP_MEAN)
    image_std = list(CLIP_STD)
    size = {"shortest_edge": 224}
    default_to_square = False
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    @classmethod
    def from_adpretrain_config(cls, config) -> "ADPretrainImageProcessor":
        """The processor that matches a model config (its image size and statistics)."""
        size = int(config.image_size)
        return cls(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=list(config.image_mean),
            image_std=list(config.image_std),
        )

    @property
    def output_size(self) -> tuple[int, int]:
        crop = self.crop_size
        return int(crop["height"]), int(crop["width"])

    def preprocess_masks(self, masks: Union[Any, Sequence[Any]]) -> torch.Tensor:
        """Masks (paths, PIL, numpy / tensor ``[H, W]``) -> ``[N, h, w]`` float {0, 1}; nonzero = defect.

        One rule for every storage (0/255 or 0/1 ``L``, palette ``P`` indices, RGB, 16-bit, bool):
        see ``image_io_adpretrain.read_mask``. Uses the image path's own resize and crop with
        nearest interpolation, so the geometry is identical to :meth:`__call__` on the matching images.
        """
        if not isinstance(masks, (list, tuple)):
            masks = [masks]
        if len(masks) == 0:
            raise ValueError("no masks given: pass one mask per image (an all-zero array for a normal image)")
        arrays = []
        for i, mask in enumerate(masks):
            binary = read_mask(mask, what=f"mask #{i}").astype(np.uint8) * UINT8_MAX
            arrays.append(np.repeat(binary[..., None], 3, axis=-1))
        out = self(
            arrays,
            resample=PILImageResampling.NEAREST,
            do_rescale=False,
            do_normalize=False,
            do_convert_rgb=False,
            return_tensors="pt",
        )["pixel_values"]
        return (out[:, 0] > 0).float()


def load_saved_processor(path_or_id: Any, hub_kwargs: Optional[dict] = None) -> Optional[ADPretrainImageProcessor]:
    """The processor saved in a checkpoint folder or (cached) Hub repo; None when it has none.

    ``hub_kwargs``: ``from_pretrained``'s download options (``local_files_only``, ``revision``,
    ``subfolder``, ...). A corrupt ``preprocessor_config.json`` raises (it is not "absent").
    """
    source = os.fspath(path_or_id) if isinstance(path_or_id, (str, os.PathLike)) else ""
    if not source:
        return None
    file = resolve_file(source, PROCESSOR_FILE, hub_kwargs or {})
    return None if file is None else ADPretrainImageProcessor.from_pretrained(os.path.dirname(file))


def _feature_config(model: Any) -> Any:
    """The ``ADPretrainConfig`` behind a feature model or a detector (``model.adpretrain``)."""
    feature_model = getattr(model, "adpretrain", None)
    config = getattr(feature_model if feature_model is not None else model, "config", None)
    if config is None or not hasattr(config, "image_size"):
        raise TypeError(
            f"processor_for needs an ADPretrainModel or ADPretrainDetectorModel, got {type(model).__name__}: "
            "load one with from_pretrained(folder) first"
        )
    return config


def check_processor(processor: ADPretrainImageProcessor, config: Any, source: str = "the processor") -> None:
    """Raise when ``processor`` cannot feed a model with ``config``: it must output
    ``[3, image_size, image_size]`` (mean/std/resample may differ: that is an edit, not a break)."""
    size = int(config.image_size)
    if processor.do_center_crop:
        got, where = processor.output_size, f"crop_size {dict(processor.crop_size)}"
    else:
        resize = dict(processor.size)
        got = (resize.get("height"), resize.get("width"))
        where = f"size {resize} without a center crop"
    if got != (size, size):
        raise ValueError(
            f"{source} outputs {where} but the model's config.image_size is {size}: "
            f'set "crop_size": {{"height": {size}, "width": {size}}} (and a "size" of at least {size}) '
            f"in its {PROCESSOR_FILE}, or delete the file to use the config's default"
        )
    shortest = dict(processor.size).get("shortest_edge")
    if processor.do_center_crop and shortest is not None and int(shortest) < size:
        raise ValueError(
            f'{source} resizes to shortest_edge {shortest}, below the {size}x{size} crop (the crop would pad): '
            f'set "size": {{"shortest_edge": {size}}} (or more) in its {PROCESSOR_FILE}'
        )


def processor_for(model: Any, warn_missing: bool = True) -> ADPretrainImageProcessor:
    """The image processor that goes with ``model`` (an ``ADPretrainModel`` or ``ADPretrainDetectorModel``).

    Order: the processor ``from_pretrained`` found beside the weights; else the one in the local
    folder ``model.name_or_path`` (or its offline Hub cache; never the network); for a detector,
    else its feature model's; else ``from_adpretrain_config(config)``. A saved processor whose
    output size is not ``config.image_size`` raises (naming both); another mean/std/resample is used.
    ``warn_missing``: warn when ``name_or_path`` is a folder without ``preprocessor_config.json``.
    """
    config = _feature_config(model)
    source = str(getattr(model, "name_or_path", "") or "")
    processor = getattr(model, SAVED_PROCESSOR_ATTR, None)
    if processor is None and source:
        processor = load_saved_processor(source, {"local_files_only": True})
        if processor is None and warn_missing and os.path.isdir(source):
            warnings.warn(
                f"checkpoint {source!r} has no {PROCESSOR_FILE}: using "
                f"ADPretrainImageProcessor.from_adpretrain_config(model.config) (shortest edge -> {config.image_size}, "
                "center crop, the config's mean/std). Pass image_processor=... or save one beside the weights to silence this.",
                UserWarning,
                stacklevel=3,
            )
    if processor is not None:
        check_processor(processor, config, f"the {PROCESSOR_FILE} saved with {source or 'the model'!r}")
        return copy.deepcopy(processor)  # callers may edit theirs; the model's stays as loaded
    feature_model = getattr(model, "adpretrain", None)
    if feature_model is not None:
        return processor_for(feature_model, warn_missing=False)
    return ADPretrainImageProcessor.from_adpretrain_config(config)


ADPretrainImageProcessor.register_for_auto_class("AutoImageProcessor")
