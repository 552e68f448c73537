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
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling

MASK_THRESHOLD = 127  # uint8 mask values above this are defect pixels


class ADPretrainImageProcessor(PilBackend):
    """Image processor of ADPretrain checkpoints (also serves masks: :meth:`preprocess_masks`)."""

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = [0.48145466, 0.4578275, 0.40821073]
    image_std = [0.26862954, 0.26130258, 0.27577711]
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
        """Masks (PIL / numpy ``[H, W]``; None = all normal, needs ``sizes``) -> ``[N, h, w]`` float {0, 1}.

        Uses the image path's own resize and crop with nearest interpolation, so the
        geometry is identical to :meth:`__call__` on the matching images.
        """
        if not isinstance(masks, (list, tuple)):
            masks = [masks]
        if len(masks) == 0:
            raise ValueError("no masks given")
        arrays = []
        for mask in masks:
            if isinstance(mask, torch.Tensor):
                mask = mask.cpu().numpy()
            if isinstance(mask, np.ndarray):
                if mask.ndim == 3:
                    mask = mask[..., 0] if mask.shape[-1] in (1, 3, 4) else mask[0]
                mask = Image.fromarray(((mask > 0) * 255).astype(np.uint8) if mask.dtype != np.uint8 else mask)
            if not isinstance(mask, Image.Image):
                raise TypeError(f"a mask must be a PIL image, numpy array or tensor, got {type(mask).__name__}")
            arrays.append(np.asarray(mask.convert("L"))[..., None].repeat(3, axis=-1))
        out = self(
            arrays,
            resample=PILImageResampling.NEAREST,
            do_rescale=False,
            do_normalize=False,
            do_convert_rgb=False,
            return_tensors="pt",
        )["pixel_values"]
        return (out[:, 0] > MASK_THRESHOLD).float()


ADPretrainImageProcessor.register_for_auto_class("AutoImageProcessor")
