"""``ADPretrainImageProcessor``: one geometry for images and masks.

Resize the shorter side to the preset size (bicubic), center crop, rescale to [0, 1],
normalise with the preset's mean/std (CLIP statistics for CLIP/ImageBind, ImageNet for
DINOv2). Masks go through the *same* resize/crop with nearest interpolation and are
binarised, so an image and its mask can never drift apart (the authors' release resized
test images to 256/crop 224 but references to 224; we use one geometry everywhere).

The PIL backend is pinned (transformers would otherwise pick the torchvision backend when
it is installed, whose pixels differ by up to 0.015).

Part of the remote-code bundle.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling

from .image_io_adpretrain import UINT8_MAX, read_mask
from .presets_adpretrain import CLIP_MEAN, CLIP_STD


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


ADPretrainImageProcessor.register_for_auto_class("AutoImageProcessor")
