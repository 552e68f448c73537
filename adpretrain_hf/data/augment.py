"""Photometric two-view augmentation for pretraining, and image/mask loading for a row.

The angle loss contrasts the *same location* in two views of one image, so the views may
differ only photometrically: no crop, flip or resize, and one mask serves both. The recipe
is the release's (``../shared/REFERENCE_NOTES.md``, "Training"): colour jitter
(0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale with p=0.2, Gaussian blur of radius
U[0.1, 2.0] with p=0.5, in that order. It is written with PIL only (no torchvision), and
draws its randomness from a ``numpy.random.Generator`` so that it can be reproduced.
"""

from __future__ import annotations

import io
import os
from typing import Mapping

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from .schema import MASK_OFF_VALUE

COLOR_JITTER_BRIGHTNESS = 0.4
COLOR_JITTER_CONTRAST = 0.4
COLOR_JITTER_SATURATION = 0.4
COLOR_JITTER_HUE = 0.1
COLOR_JITTER_PROB = 0.8
GRAYSCALE_PROB = 0.2
BLUR_PROB = 0.5
BLUR_RADIUS = (0.1, 2.0)  # PIL's GaussianBlur radius is the kernel's standard deviation
MASK_ON = 255  # defective pixels in returned masks
HUE_LEVELS = 256  # PIL stores hue as 0..255
SIXTEEN_BIT_TO_EIGHT = 257  # 65535 / 255


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue of an RGB image by ``shift`` turns (in [-0.5, 0.5])."""
    h, s, v = image.convert("HSV").split()
    offset = int(round(shift * (HUE_LEVELS - 1))) % HUE_LEVELS
    hue = ((np.asarray(h, dtype=np.int16) + offset) % HUE_LEVELS).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")


def _color_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """torchvision's ``ColorJitter`` semantics: the four adjustments in a random order."""
    factors = {
        "brightness": rng.uniform(1 - COLOR_JITTER_BRIGHTNESS, 1 + COLOR_JITTER_BRIGHTNESS),
        "contrast": rng.uniform(1 - COLOR_JITTER_CONTRAST, 1 + COLOR_JITTER_CONTRAST),
        "saturation": rng.uniform(1 - COLOR_JITTER_SATURATION, 1 + COLOR_JITTER_SATURATION),
        "hue": rng.uniform(-COLOR_JITTER_HUE, COLOR_JITTER_HUE),
    }
    for op in rng.permutation(list(factors)):
        factor = float(factors[op])
        if op == "brightness":
            image = ImageEnhance.Brightness(image).enhance(factor)
        elif op == "contrast":
            image = ImageEnhance.Contrast(image).enhance(factor)
        elif op == "saturation":
            image = ImageEnhance.Color(image).enhance(factor)
        else:
            image = _shift_hue(image, factor)
    return image


class TwoViewAugment:
    """Make two independently augmented views of one image, same size and geometry.

    Args:
        seed: ``None`` draws fresh OS entropy on every call (safe in DataLoader workers,
            which would otherwise all copy one generator's state); an int makes the stream of
            views reproducible for this instance.

    ``augment(image)`` returns ``(view_1, view_2)`` as RGB PIL images; pass ``rng=`` to
    control the randomness of one call explicitly.
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.seed = seed
        self._rng = None if seed is None else np.random.default_rng(seed)

    def view(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """One augmented view of ``image`` (converted to RGB first)."""
        out = to_rgb(image)
        if rng.random() < COLOR_JITTER_PROB:
            out = _color_jitter(out, rng)
        if rng.random() < GRAYSCALE_PROB:
            out = out.convert("L").convert("RGB")
        if rng.random() < BLUR_PROB:
            out = out.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*BLUR_RADIUS))))
        return out

    def __call__(
        self, image: Image.Image, rng: np.random.Generator | None = None
    ) -> tuple[Image.Image, Image.Image]:
        if not isinstance(image, Image.Image):
            raise TypeError(f"TwoViewAugment takes a PIL image, got {type(image).__name__}: decode it first")
        if rng is None:
            rng = self._rng if self._rng is not None else np.random.default_rng()
        return self.view(image, rng), self.view(image, rng)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


def open_image(value: object) -> Image.Image:
    """A PIL image from what a ``datasets.Image`` column can hold (decoded or not) or a path."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (str, os.PathLike)):
        return Image.open(value)
    if isinstance(value, Mapping) and (value.get("bytes") or value.get("path")):
        return Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    raise TypeError(
        f"expected a PIL image, a path or a {{'path', 'bytes'}} dict, got {type(value).__name__}"
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of any PIL image: grayscale is replicated, alpha dropped, 16-bit rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit grayscale
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > np.iinfo(np.uint8).max:
            values = values / SIXTEEN_BIT_TO_EIGHT
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def binarise_mask(mask: Image.Image) -> Image.Image:
    """An ``L`` mask with :data:`MASK_ON` where any colour channel is nonzero, 0 elsewhere."""
    if mask.mode in ("RGBA", "LA", "PA"):
        mask = mask.convert("RGB" if mask.mode == "RGBA" else "L")
    values = np.asarray(mask)
    if values.ndim == 3:
        values = values.max(axis=-1)
    return Image.fromarray(np.where(values != MASK_OFF_VALUE, MASK_ON, 0).astype(np.uint8), "L")


def load_image_and_mask(example: Mapping[str, object]) -> tuple[Image.Image, Image.Image]:
    """``(RGB image, L mask of 0/255)`` for one dataset row; an all-zero mask when ``mask`` is None.

    The mask is binarised with the schema's rule (nonzero = defective) and must have the
    image's size.
    """
    if not isinstance(example, Mapping) or "image" not in example:
        raise TypeError("example must be a dataset row (a mapping with an 'image' entry)")
    image = to_rgb(open_image(example["image"]))
    if example.get("mask") is None:
        return image, Image.new("L", image.size, 0)
    mask = binarise_mask(open_image(example["mask"]))
    if mask.size != image.size:
        raise ValueError(
            f"mask size {mask.size} differs from image size {image.size} for sample "
            f"{example.get('sample_id', '?')!r}: the mask file does not belong to this image"
        )
    return image, mask
