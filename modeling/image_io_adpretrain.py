"""One reader of images and masks for every path (pipeline, ``adpretrain features``, processor).

Why one: the same file must give the same pixels whether it is scored by the pipeline or read
by a training/evaluation loader. Rules:

- Images -> RGB PIL. Grayscale is replicated, alpha dropped. 16-bit images (PIL ``I;16*``, numpy
  ``uint16``) are rescaled by 65535 -> 255 instead of being saturated to white; 32-bit ``I`` / ``F``
  images are rescaled the same way when their values exceed 255 (floats in [0, 1] are scaled by
  255). Non-finite values and empty (0-pixel) images are refused with the image named.
- Files: EXIF orientation applied (a portrait phone photo is scored as it is shown, like
  ``transformers.image_utils.load_image``). Large files are decoded reduced: a side above
  :data:`WORKING_MAX_SIDE` is divided by the smallest integer factor that brings it within (JPEG
  decodes reduced via ``draft``, other formats via ``reduce`` after decoding), so maps, overlays
  and memory stay bounded; a file above :data:`MAX_DECODE_PIXELS` is refused, naming the fix.
  Maps of a reduced image are at the reduced size.
- Masks -> bool ``[H, W]``: **nonzero = defect**, for every storage (0/255 or 0/1 ``L``, palette
  ``P`` masks as VisA ships them (the index, not its colour), RGB(A) with any colour channel set,
  16-bit, bool/int/float arrays, tensors).

Part of the remote-code bundle: numpy / PIL / torch only.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

UINT8_MAX = 255
SIXTEEN_BIT_TO_EIGHT = 257.0  # 65535 / 255
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
WIDE_MODES = ("I", "F")  # 32-bit integer / float grayscale
EXIF_ORIENTATION = 0x0112
WORKING_MAX_SIDE = 2048
"""Largest side an image file is decoded at (processors work at a few hundred pixels)."""
MAX_DECODE_PIXELS = 150_000_000
"""Files above this many pixels (about 12,200 x 12,200) are refused: decoding one costs gigabytes."""
ALPHA_MODES = {"RGBA": "RGB", "LA": "L", "PA": "P", "RGBa": "RGB", "La": "L"}


def _check_size(width: int, height: int, what: str) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"{what} is {width}x{height} pixels (empty): pass an image with at least one pixel per side")


def _wide_to_uint8(values: np.ndarray, mode: str, what: str) -> np.ndarray:
    """16/32-bit or float grayscale ``[H, W]`` -> uint8, rescaled instead of clipped."""
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{what} holds NaN/inf pixel values: fix the file or drop the image")
    high, low = float(values.max(initial=0.0)), float(values.min(initial=0.0))
    if mode in SIXTEEN_BIT_MODES or high > UINT8_MAX:
        values = values / SIXTEEN_BIT_TO_EIGHT
    elif mode == "F" and high <= 1.0 and low >= 0.0:
        values = values * UINT8_MAX
    return np.clip(np.rint(values), 0, UINT8_MAX).astype(np.uint8)


def pil_to_rgb(image: Image.Image, what: str = "image") -> Image.Image:
    """Any PIL image -> RGB (16-bit rescaled, grayscale replicated, alpha dropped)."""
    _check_size(image.width, image.height, what)
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES or image.mode in WIDE_MODES:
        image = Image.fromarray(_wide_to_uint8(np.asarray(image), image.mode, what), "L")
    return image.convert("RGB")


def array_to_uint8(array: np.ndarray, what: str = "image") -> np.ndarray:
    """``[H, W]`` or ``[H, W, 1|3|4]`` uint8 / uint16 / float in [0, 1] -> uint8 array PIL can take."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        hint = ": channels-first? use array.transpose(1, 2, 0)" if array.ndim == 3 and array.shape[0] in (1, 3, 4) else ""
        raise ValueError(f"{what} array has shape {array.shape}; expected [H, W] (grayscale) or [H, W, 3|4] (RGB/RGBA){hint}")
    _check_size(array.shape[1], array.shape[0], what)
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return np.rint(array / SIXTEEN_BIT_TO_EIGHT).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{what} array holds NaN/inf values: fix or drop the image")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"float {what} arrays must hold values in [0, 1], got [{low:.3g}, {high:.3g}]: divide by 255 or pass uint8")
        return np.round(array * UINT8_MAX).astype(np.uint8)
    raise ValueError(f"{what} array has dtype {array.dtype}: pass uint8 (0..255), uint16 (0..65535) or float in [0, 1]")


def _open(path: str, what: str, reduce: bool = True) -> Image.Image:
    """Decode one file: size checked from the header first, reduced to :data:`WORKING_MAX_SIDE`
    (``reduce``), EXIF orientation applied."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} file {path!r} does not exist: pass the path of an image file, a PIL image or a numpy array")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is ours, and named
            with Image.open(path) as handle:
                width, height = handle.size
                if width * height > MAX_DECODE_PIXELS:
                    raise _TooLarge(f"{what} file {path!r} is {width}x{height} pixels ({width * height / 1e6:.0f} MP), more than "
                                    f"the {MAX_DECODE_PIXELS / 1e6:.0f} MP this reader decodes: downscale it first "
                                    "(e.g. with PIL's Image.reduce or `convert in.png -resize 25% out.png`)")
                factor = reduction_factor(width, height) if reduce else 1
                target = (math.ceil(width / factor), math.ceil(height / factor))  # what Image.reduce(factor) gives
                if factor > 1 and handle.format == "JPEG":
                    handle.draft(handle.mode, target)  # decodes at 1/2, 1/4 or 1/8 scale, never below target
                handle.load()
                image = handle
                if image.size != target:
                    exact = image.size == (width, height) and image.mode not in SIXTEEN_BIT_MODES
                    image = image.reduce(factor) if exact else image.resize(target, Image.Resampling.BOX)
                oriented = ImageOps.exif_transpose(image) if _orientation(handle) not in (None, 1) else image
                return oriented if oriented is not handle else handle.copy()
    except _TooLarge as err:
        raise ValueError(str(err)) from None
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"could not read {what} file {path!r} ({type(err).__name__}: {err}): pass a PNG/JPEG/... that PIL can open") from err


class _TooLarge(Exception):
    """Raised inside :func:`_open` so that the size message is not re-wrapped as a decoding error."""


def _orientation(image: Image.Image) -> Any:
    try:
        return image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block: read the pixels as stored
        return None


def open_upright(image: Any, what: str = "image") -> Image.Image:
    """A path (decoded at full size: a mask must keep every pixel of its image) or a PIL image,
    with its EXIF orientation applied: the data loaders' reader, so training and evaluation see
    images the way :func:`read_image` shows them to the pipelines."""
    if isinstance(image, (str, os.PathLike)):
        return _open(os.fspath(image), what, reduce=False)
    return ImageOps.exif_transpose(image) if _orientation(image) not in (None, 1) else image


def reduction_factor(width: int, height: int) -> int:
    """The smallest integer ``f`` with ``max(width, height) / f <= WORKING_MAX_SIDE`` (1: as it is)."""
    return max(1, math.ceil(max(width, height) / WORKING_MAX_SIDE))


def read_image(image: Any, what: str = "image") -> Image.Image:
    """One input (PIL image, path, numpy ``[H, W]`` / ``[H, W, 1|3|4]``) -> RGB PIL image."""
    if isinstance(image, (str, os.PathLike)):
        return pil_to_rgb(_open(os.fspath(image), what), what)
    if isinstance(image, Image.Image):
        if _orientation(image) not in (None, 1):
            image = ImageOps.exif_transpose(image)
        return pil_to_rgb(image, what)
    if isinstance(image, np.ndarray):
        return Image.fromarray(array_to_uint8(image, what)).convert("RGB")
    raise TypeError(
        f"{what} must be a PIL image, a path (str/Path) or a numpy array [H, W(, C)], got {type(image).__name__}"
        + (": convert tensors with .permute(1, 2, 0).numpy()" if isinstance(image, torch.Tensor) else "")
    )


def read_mask(mask: Any, what: str = "mask") -> np.ndarray:
    """One mask (path, PIL, numpy / tensor ``[H, W]``, ``[H, W, C]`` or ``[1|3, H, W]``) -> bool ``[H, W]``, nonzero = defect."""
    if isinstance(mask, (str, os.PathLike)):
        mask = _open(os.fspath(mask), what, reduce=False)  # a mask keeps every pixel (it is compared to a map of its image)
    if isinstance(mask, Image.Image):
        _check_size(mask.width, mask.height, what)
        if mask.mode in ALPHA_MODES:
            mask = mask.convert(ALPHA_MODES[mask.mode]) if mask.mode != "PA" else Image.fromarray(np.asarray(mask)[..., 0])
        values = np.asarray(mask)  # "P": palette indices, so index 0 is normal whatever its colour
    elif isinstance(mask, torch.Tensor):
        values = mask.detach().cpu().numpy()
    elif isinstance(mask, np.ndarray):
        values = mask
    else:
        raise TypeError(f"{what} must be a PIL image, a path, a numpy array or a tensor, got {type(mask).__name__}")
    if values.ndim == 3:
        if values.shape[-1] in (1, 3, 4):  # channels last; a 4th (alpha) channel is not a defect
            values = (values[..., :3] != 0).any(axis=-1)
        elif values.shape[0] in (1, 3):
            values = values.any(axis=0)
    if values.ndim != 2:
        raise ValueError(f"{what} has shape {tuple(values.shape)}: pass [H, W] (or [H, W, C] / [1, H, W])")
    _check_size(values.shape[1], values.shape[0], what)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ValueError(f"{what} holds NaN/inf values: masks are 0 (normal) / nonzero (defect)")
    return values != 0
