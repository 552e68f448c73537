"""``pipeline("anomaly-features")``: images in; ADPretrain features, anomaly maps and scores out.

    pipe = pipeline("anomaly-features", model=model_or_dir, references=normal_images)
    out = pipe(image)  # {"features": {block: [h, w, D]}, "anomaly_map": [H, W], "score": float}

Why a pipeline: it owns the three steps every user would otherwise rewrite — reading images
of any kind (PIL / path / numpy, grayscale / RGBA), computing the normal reference bank once
(cached for the pipeline's lifetime, keyed by the *content* of the processed references), and
mapping the model's anomaly map (at the processor's crop size) back onto each input image.

Shapes per image: ``features`` / ``residuals`` / ``backbone`` are dicts keyed by backbone block
number (``config.layers``) of ``[h_l, w_l, C_l]`` float32; ``anomaly_map`` is ``[H, W]`` float32
at the input's own size; ``score`` is a float (max of the map the model analysed).

Part of the remote-code bundle (``save_pretrained`` copies it and writes ``custom_pipelines``):
imports only torch / transformers / numpy / PIL and its siblings relatively.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Pipeline
from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
from transformers.image_utils import SizeDict, get_image_size_for_max_height_width

from .content_keys_adpretrain import combine_keys, pixel_hash
from .dtypes_adpretrain import dtype_from_name
from .image_io_adpretrain import read_image
from .image_processing_adpretrain import ADPretrainImageProcessor, processor_for
from .reference_bank_adpretrain import ReferenceBank

OUTPUTS = ("features", "residuals", "backbone", "anomaly_map", "score")
DEFAULT_OUTPUTS = ("features", "anomaly_map", "score")
# output name -> ADPretrainOutput field holding per-layer tokens [B, N_l, C_l]
LAYER_OUTPUTS = {"features": "features", "residuals": "residuals", "backbone": "backbone_features"}
MAX_CACHED_BANKS = 4  # distinct reference sets kept at once (each is K*N_l x C_l per layer)
_LENIENT_KWARGS = ("local_files_only",)  # forwarded by pipeline() to every pipeline class
NO_REFERENCES = (
    "no normal reference images: pass references=[normal images] to the call or to "
    "pipeline('anomaly-features', ..., references=...) (their features are computed once and cached), "
    "or give the model a stored bank with model.set_references(processor(normal_images)['pixel_values']) "
    "(save_pretrained(..., save_references=True) keeps it in the checkpoint)"
)
ImageLike = Union[Image.Image, str, os.PathLike, np.ndarray]


# -- inputs -------------------------------------------------------------------------------
def read_for_model(image: ImageLike, what: str, smallest_stride: int) -> Image.Image:
    """The shared reader, plus: an image smaller than the backbone's smallest stride (pixels) carries nothing to score."""
    rgb = read_image(image, what)
    if min(rgb.width, rgb.height) < smallest_stride:
        raise ValueError(
            f"{what} is {rgb.width}x{rgb.height} pixels, smaller than one token of the backbone "
            f"(its smallest stride: {smallest_stride}x{smallest_stride}): "
            "upsampling it would score made-up content; pass the full-resolution image"
        )
    return rgb


def model_inputs_of(image: ImageLike, processor: Any, smallest_stride: int) -> dict[str, torch.Tensor]:
    """One input -> ``pixel_values [1, 3, S, S]`` and ``original_size [1, 2]`` (H, W): the
    ``preprocess`` step both pipelines share."""
    rgb = read_for_model(image, "image", smallest_stride)
    pixel_values = processor(rgb, return_tensors="pt")["pixel_values"]
    return {"pixel_values": pixel_values, "original_size": torch.tensor([[rgb.height, rgb.width]])}


def check_inputs(inputs: Any) -> Any:
    """``__call__``'s input rule for both pipelines: a tuple is a list; an empty list is an error."""
    if isinstance(inputs, tuple):
        inputs = list(inputs)
    if isinstance(inputs, list) and not inputs:
        raise ValueError("no images given: pass one image or a non-empty list of images")
    return inputs


# -- geometry of the processor ----------------------------------------------------------------
def _size_dict(size: Any) -> SizeDict:
    return size if isinstance(size, SizeDict) else SizeDict(**dict(size))


def crop_window(processor: Any, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Where the model's input sits in the *resized* image, mirroring ``PilBackend`` exactly.

    Returns ``((resized_h, resized_w), (top, left, crop_h, crop_w))``; ``top``/``left`` are
    negative when the crop is larger than the resized image (the processor pads with zeros).
    """
    new_h, new_w = height, width
    if getattr(processor, "do_resize", False):
        size = _size_dict(processor.size)
        if size.shortest_edge and size.longest_edge:
            new_h, new_w = get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge)
        elif size.shortest_edge:  # the helper reads only the shape: a zero-stride view costs nothing
            shape_only = np.broadcast_to(np.zeros((), np.uint8), (1, height, width))
            new_h, new_w = get_resize_output_image_size(shape_only, size.shortest_edge, default_to_square=False, input_data_format="channels_first")
        elif size.max_height and size.max_width:
            new_h, new_w = get_image_size_for_max_height_width((height, width), size.max_height, size.max_width)
        elif size.height and size.width:
            new_h, new_w = size.height, size.width
        else:
            raise ValueError(f"cannot map anomaly maps back through the processor's size={processor.size}")
    if not getattr(processor, "do_center_crop", False):
        return (new_h, new_w), (0, 0, new_h, new_w)
    crop = _size_dict(processor.crop_size)
    return (new_h, new_w), ((new_h - crop.height) // 2, (new_w - crop.width) // 2, crop.height, crop.width)


def map_to_image(anomaly_map: torch.Tensor, processor: Any, size: tuple[int, int]) -> torch.Tensor:
    """Undo the processor's resize + center crop: ``[h, w]`` map of the model's input -> ``[H, W]``.

    The crop window is placed back into the resized frame; the border the crop cut away was
    never seen by the model and gets the map's nearest edge value (replicate padding); the
    resized frame is then bilinearly resized to the original ``(H, W)``. When the crop covers
    the whole resized image (square inputs) this is a plain resize.
    """
    (new_h, new_w), (top, left, crop_h, crop_w) = crop_window(processor, *size)
    if (top, left) == (0, 0) and (crop_h, crop_w) == (new_h, new_w) == tuple(size) == tuple(anomaly_map.shape):
        return anomaly_map.float()  # the model saw the image as it is
    grid = anomaly_map.float()[None, None]
    if tuple(grid.shape[-2:]) != (crop_h, crop_w):
        grid = F.interpolate(grid, size=(crop_h, crop_w), mode="bilinear", align_corners=False)
    rows = (torch.arange(new_h, device=grid.device) - top).clamp_(0, crop_h - 1)
    cols = (torch.arange(new_w, device=grid.device) - left).clamp_(0, crop_w - 1)
    frame = grid[..., rows, :][..., cols]  # [1, 1, new_h, new_w]
    if (new_h, new_w) != tuple(size):
        frame = F.interpolate(frame, size=tuple(size), mode="bilinear", align_corners=False)
    return frame[0, 0]


def resolve_dtype(dtype: Any, device: torch.device, current: torch.dtype) -> torch.dtype:
    """``None``/"auto": bf16 on CUDA (the backbone's fast path), the model's own dtype elsewhere."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else current
    return dtype_from_name(dtype)


# -- the pipeline -----------------------------------------------------------------------------
class AnomalyFeaturesPipeline(Pipeline):
    """Task ``anomaly-features``: see the module docstring and docs/PIPELINE.md.

    Call options (also accepted by ``pipeline(...)`` as defaults): ``references`` (normal
    images), ``output`` (any of ``features``, ``residuals``, ``backbone``, ``anomaly_map``,
    ``score``), ``layers`` (block numbers from ``config.layers``), ``return_tensors``
    (``"pt"`` | ``"np"``), ``batch_size``, ``num_workers``. Constructor: ``device``, ``dtype``.
    """

    # False: pipeline() does not load the processor itself; processor_for(model) picks the one
    # saved with the checkpoint (checked against config.image_size), else the config's default.
    _load_image_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_processor = False
    _load_video_processor = False

    def __init__(self, model: Any, image_processor: Any = None, dtype: Any = None, **kwargs: Any) -> None:
        self._bank_cache: OrderedDict = OrderedDict()
        self._stored_bank: Optional[tuple[ReferenceBank, ReferenceBank]] = None  # (the model's, on this device)
        if image_processor is None:
            image_processor = processor_for(model)
        elif isinstance(image_processor, (str, os.PathLike)):  # a folder / Hub id, as pipeline() would load
            image_processor = ADPretrainImageProcessor.from_pretrained(image_processor)
        super().__init__(model, image_processor=image_processor, **kwargs)
        target = resolve_dtype(dtype, self.device, self.model.dtype)
        if target != self.model.dtype:
            self.model.to(target)

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        """One image -> one dict; a list (or tuple) of images -> a list of dicts."""
        return super().__call__(check_inputs(inputs), **kwargs)

    # -- parameters ---------------------------------------------------------------------------
    def _sanitize_parameters(self, references=None, layers=None, output=None, return_tensors=None, **kwargs):
        unknown = sorted(set(kwargs) - set(_LENIENT_KWARGS))
        if unknown:
            raise TypeError(
                f"unknown option(s) {unknown} for the anomaly-features pipeline: it takes references, output, "
                "layers, return_tensors, batch_size, num_workers (and device/dtype when built)"
            )
        forward, post = {}, {}
        if output is not None:
            names = (output,) if isinstance(output, str) else tuple(output)
            bad = [name for name in names if name not in OUTPUTS]
            if bad or not names:
                raise ValueError(f"output={output!r}: choose one or more of {OUTPUTS}")
            forward["outputs"] = post["outputs"] = names
        if layers is not None:
            forward["positions"] = self._layer_positions(layers)
        if return_tensors is not None:
            if return_tensors not in ("pt", "np"):
                raise ValueError(f"return_tensors={return_tensors!r}: use 'pt' (torch) or 'np' (numpy)")
            post["return_tensors"] = return_tensors
        if references is not None:
            forward["references"] = self._prepare_references(references)
        return {}, forward, post

    def _layer_positions(self, layers: Union[int, Sequence[int]]) -> tuple[int, ...]:
        tapped = list(self.model.config.layers)
        wanted = [layers] if isinstance(layers, int) else list(layers)
        bad = [layer for layer in wanted if layer not in tapped]
        if bad or not wanted:
            raise ValueError(f"layers={layers!r}: this model taps backbone blocks {tapped} (config.layers); pick from those")
        return tuple(tapped.index(layer) for layer in wanted)

    def _prepare_references(self, references: Any) -> tuple[str, torch.Tensor]:
        """Normal images -> (content key, pixel values ``[K, 3, S, S]`` float32 on CPU).

        The key hashes the *processed* pixels, so the same images passed again (as new
        objects, paths or arrays) hit the cache, and edited images never do.
        """
        items = list(references) if isinstance(references, (list, tuple)) else [references]
        if not items:
            raise ValueError("references is empty: pass at least one normal image")
        images = [read_for_model(item, f"reference #{i}", self._smallest_stride()) for i, item in enumerate(items)]
        pixels = self.image_processor(images, return_tensors="pt")["pixel_values"].float().contiguous()
        return combine_keys([pixel_hash(image) for image in pixels]), pixels

    def _bank(self, references: Optional[tuple[str, torch.Tensor]]) -> Optional[ReferenceBank]:
        """The bank (per layer on the model's device and dtype), computed once per reference set (keyed by its pixels)."""
        if not self.model.config.needs_references:
            return None  # raw-feature ablation: the model never reads a bank
        dtype = self.model.dtype
        if references is not None:
            key = (references[0], str(self.device), dtype)
            if key not in self._bank_cache:
                self._bank_cache[key] = ReferenceBank(self.model.compute_reference_bank(references[1].to(self.device, dtype)), (references[0],))
                while len(self._bank_cache) > MAX_CACHED_BANKS:
                    self._bank_cache.popitem(last=False)
            self._bank_cache.move_to_end(key)
            return self._bank_cache[key]
        stored = self.model.reference_bank
        if stored is None:
            raise ValueError(NO_REFERENCES)
        # Keep the stored bank itself in the entry: an identity check cannot be fooled by id reuse.
        if self._stored_bank is None or self._stored_bank[0] is not stored:
            self._stored_bank = (stored, ReferenceBank([layer.to(self.device, dtype) for layer in stored.layers]))
        return self._stored_bank[1]

    def _smallest_stride(self) -> int:
        """The backbone adapter's smallest stride in pixels (a ViT's patch, a CNN's finest tapped
        reduction); pipelines over wrapped models override it."""
        return int(self.model.backbone.smallest_stride)

    # -- steps --------------------------------------------------------------------------------
    def preprocess(self, image: ImageLike) -> dict[str, torch.Tensor]:
        return model_inputs_of(image, self.image_processor, self._smallest_stride())

    def _forward(self, model_inputs, outputs=DEFAULT_OUTPUTS, positions=None, references=None):
        """Batched model call -> a *flat* dict of ``[B, ...]`` tensors (what the un-batcher can split).

        Only the requested outputs are kept, so nothing else is copied back to the CPU.
        """
        pixel_values = model_inputs["pixel_values"].to(self.model.dtype)
        need_map = "anomaly_map" in outputs or "score" in outputs
        bank = self._bank(references)
        result = self.model(pixel_values, reference_features=None if bank is None else bank.layers, output_anomaly_map=need_map)
        flat = {"original_size": model_inputs["original_size"]}
        positions = range(len(result.grid_sizes)) if positions is None else positions
        for name, field in LAYER_OUTPUTS.items():
            if name in outputs:
                tokens = getattr(result, field)
                for pos in positions:
                    h, w = result.grid_sizes[pos]
                    block = self.model.config.layers[pos]
                    flat[f"{name}.{block}"] = tokens[pos].reshape(tokens[pos].shape[0], h, w, -1)
        if need_map:
            flat["anomaly_map"], flat["score"] = result.anomaly_map, result.score
        return flat

    def postprocess(self, model_outputs, outputs=DEFAULT_OUTPUTS, return_tensors="pt") -> dict[str, Any]:
        """Un-batched ``[1, ...]`` tensors -> the per-image dict (maps at the input's own size)."""
        height, width = (int(v) for v in model_outputs["original_size"][0])
        record: dict[str, Any] = {}
        for name in LAYER_OUTPUTS:
            if name in outputs:
                prefix = f"{name}."
                record[name] = {
                    int(key[len(prefix):]): value[0].float() for key, value in model_outputs.items() if key.startswith(prefix)
                }
        if "anomaly_map" in outputs:
            record["anomaly_map"] = map_to_image(model_outputs["anomaly_map"][0], self.image_processor, (height, width))
        if "score" in outputs:
            record["score"] = float(model_outputs["score"].reshape(-1)[0])
        if return_tensors == "np":
            record = {k: _to_numpy(v) for k, v in record.items()}
        return {name: record[name] for name in OUTPUTS if name in record}


def _to_numpy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    return value.numpy() if isinstance(value, torch.Tensor) else value
