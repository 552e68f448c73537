"""Photometric two-view augmentation for pretraining, and image/mask loading for a row.

The angle loss contrasts the *same location* in two views of one image, so the views may
differ only photometrically: no crop, flip or resize, and one mask serves both. The recipe
is the release's: colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale with p=0.2,
Gaussian blur of standard deviation U[0.1, 2.0] px with p=0.5, in that order.

Order matters for the blur: its sigma is in pixels of the image it is applied to, and the
release blurs the 224 px training view. So the training pipeline resizes + crops first
(``processor(image, do_normalize=False)``), augments that ``[3, H, W]`` tensor here, and
normalises last; blurring a 1000 px source image before the resize would make the blur
2-5x weaker at the model's resolution.

Built on ``torchvision.transforms.v2.functional``; every random draw comes from one
``torch.Generator``, so that a seed reproduces the views (torchvision's own transforms draw
from the global RNG).
"""

from __future__ import annotations

import io
import math
import os
from typing import Mapping, Union

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..modeling.image_io_adpretrain import open_upright, pil_to_rgb, read_mask

COLOR_JITTER_BRIGHTNESS = 0.4
COLOR_JITTER_CONTRAST = 0.4
COLOR_JITTER_SATURATION = 0.4
COLOR_JITTER_HUE = 0.1
COLOR_JITTER_PROB = 0.8
GRAYSCALE_PROB = 0.2
BLUR_PROB = 0.5
BLUR_SIGMA = (0.1, 2.0)  # standard deviation in pixels of the processed view (PIL's "radius")
BLUR_TRUNCATE = 3.0  # the blur kernel spans +-3 sigma: side 2 * ceil(3 sigma) + 1
MASK_ON = 255  # defective pixels in returned masks
_SEED_BITS = 63

ImageLike = Union[Image.Image, torch.Tensor]


def blur_kernel_size(sigma: float) -> int:
    """Odd kernel side covering ``+-BLUR_TRUNCATE`` standard deviations."""
    return 2 * math.ceil(BLUR_TRUNCATE * sigma) + 1


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _color_jitter(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision ``ColorJitter`` semantics (four adjustments, random order) on ``[3, H, W]`` in [0, 1]."""
    order = torch.randperm(4, generator=generator).tolist()
    factors = [
        _uniform(generator, 1 - COLOR_JITTER_BRIGHTNESS, 1 + COLOR_JITTER_BRIGHTNESS),
        _uniform(generator, 1 - COLOR_JITTER_CONTRAST, 1 + COLOR_JITTER_CONTRAST),
        _uniform(generator, 1 - COLOR_JITTER_SATURATION, 1 + COLOR_JITTER_SATURATION),
        _uniform(generator, -COLOR_JITTER_HUE, COLOR_JITTER_HUE),
    ]
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for index in order:
        image = ops[index](image, factors[index])
    return image


class TwoViewAugment:
    """Make two independently augmented views of one image, same size and geometry.

    Args:
        seed: an int makes the stream of views reproducible for this instance (the same seed
            gives the same views); ``None`` draws fresh OS entropy on every call (safe in
            DataLoader workers, which would otherwise all copy one generator's state).
        generator: a ``torch.Generator`` to draw from instead (shared with the caller).

    ``augment(image)`` takes a ``[3, H, W]`` tensor (float in [0, 1], or uint8) or a PIL image
    and returns ``(view_1, view_2)`` of the same kind; pass ``generator=`` to control one call.
    Apply it at the resolution the model sees (after resize + crop): see the module docstring.
    """

    def __init__(self, seed: int | None = None, generator: torch.Generator | None = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        if seed is not None and generator is not None:
            raise ValueError("pass seed or generator, not both")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.seed = seed
        self._generator = generator
        if seed is not None:
            self.reseed(int(seed))

    def reseed(self, seed: int) -> None:
        """Restart the stream of views from ``seed`` (e.g. per DataLoader worker: run seed + worker id)."""
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    def view(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One augmented view of a ``[3, H, W]`` float image in [0, 1]."""
        out = image
        if float(torch.rand((), generator=generator)) < COLOR_JITTER_PROB:
            out = _color_jitter(out, generator)
        if float(torch.rand((), generator=generator)) < GRAYSCALE_PROB:
            out = TF.rgb_to_grayscale(out, num_output_channels=3)
        if float(torch.rand((), generator=generator)) < BLUR_PROB:
            sigma = _uniform(generator, *BLUR_SIGMA)
            side = blur_kernel_size(sigma)
            out = TF.gaussian_blur(out, kernel_size=[side, side], sigma=[sigma, sigma])
        return out

    def __call__(self, image: ImageLike, generator: torch.Generator | None = None) -> tuple[ImageLike, ImageLike]:
        pixels, kind = _as_float_image(image)
        if generator is None:
            generator = self._generator
        if generator is None:
            generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> (64 - _SEED_BITS))
        views = self.view(pixels, generator), self.view(pixels, generator)
        return tuple(_restore(v, kind) for v in views)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"


def _as_float_image(image: ImageLike) -> tuple[torch.Tensor, str]:
    """``[3, H, W]`` float32 in [0, 1], and what to convert back to ("pil", "uint8" or "float")."""
    if isinstance(image, Image.Image):
        return TF.to_dtype(TF.pil_to_tensor(pil_to_rgb(image)), torch.float32, scale=True), "pil"
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"TwoViewAugment takes a [3, H, W] tensor or a PIL image, got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"TwoViewAugment takes one RGB image [3, H, W], got shape {list(image.shape)}")
    if image.dtype == torch.uint8:
        return TF.to_dtype(image, torch.float32, scale=True), "uint8"
    if not image.is_floating_point():
        raise TypeError(f"image tensor must be float in [0, 1] or uint8, got {image.dtype}")
    return image.float().clamp(0.0, 1.0), "float"


def _restore(view: torch.Tensor, kind: str) -> ImageLike:
    if kind == "float":
        return view
    as_uint8 = TF.to_dtype(view.clamp(0.0, 1.0), torch.uint8, scale=True)
    return TF.to_pil_image(as_uint8) if kind == "pil" else as_uint8


def open_image(value: object) -> Image.Image:
    """A PIL image from what a ``datasets.Image`` column can hold (decoded or not) or a path, upright
    (EXIF orientation applied by the package's one reader, ``modeling.image_io_adpretrain``)."""
    if isinstance(value, (Image.Image, str, os.PathLike)):
        return open_upright(value)
    if isinstance(value, Mapping) and (value.get("bytes") or value.get("path")):
        return open_upright(Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else value["path"])
    raise TypeError(
        f"expected a PIL image, a path or a {{'path', 'bytes'}} dict, got {type(value).__name__}"
    )


def load_image_and_mask(example: Mapping[str, object]) -> tuple[Image.Image, Image.Image]:
    """``(RGB image, L mask of 0/255)`` for one dataset row; an all-zero mask when ``mask`` is None.

    The mask is binarised with the schema's rule (nonzero = defective) and must have the
    image's size.
    """
    if not isinstance(example, Mapping) or "image" not in example:
        raise TypeError("example must be a dataset row (a mapping with an 'image' entry)")
    image = pil_to_rgb(open_image(example["image"]))
    if example.get("mask") is None:
        return image, Image.new("L", image.size, 0)
    # an L mask with MASK_ON where the one mask rule (nonzero = defect) says so, 0 elsewhere
    mask = Image.fromarray(np.where(read_mask(open_image(example["mask"])), MASK_ON, 0).astype(np.uint8), "L")
    if mask.size != image.size:
        raise ValueError(
            f"mask size {mask.size} differs from image size {image.size} for sample "
            f"{example.get('sample_id', '?')!r}: the mask file does not belong to this image"
        )
    return image, mask
