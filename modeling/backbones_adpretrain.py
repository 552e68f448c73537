"""Frozen backbone adapters with one interface.

Every adapter maps ``pixel_values [B, 3, H, W]`` to a list over tapped layers of patch
tokens ``[B, h_l*w_l, C_l]``: the raw residual stream after the tapped blocks (1-indexed),
CLS and register tokens dropped, row-major patch order. The rest of the package never
knows which backbone family produced them.

Frozen by construction: parameters never require grad, the adapter stays in eval mode
even when the model is put in train mode, and the forward runs without autograd, so
the backbone can never reach an optimizer or hold activations for backward.

Part of the remote-code bundle: open_clip and timm are optional (imported in ``try:``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import CONFIG_MAPPING, CLIPVisionModel, Dinov2Model

try:  # optional: the open_clip family (ImageBind's vision tower)
    import open_clip  # type: ignore
    from open_clip.model import _build_vision_tower  # type: ignore
except ImportError:  # pragma: no cover
    open_clip = None

try:  # optional: CNN backbones
    import timm  # type: ignore
except ImportError:  # pragma: no cover
    timm = None


class BackboneAdapter(nn.Module):
    """Base class: freezing, layer checks and the shared interface."""

    family = "base"

    def __init__(self, config) -> None:
        super().__init__()
        self.layers = list(config.layers)
        self.image_size = config.image_size

    # -- interface -------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        raise NotImplementedError

    @property
    def feature_dims(self) -> list[int]:
        raise NotImplementedError

    def grid_sizes(self, image_size: int) -> list[tuple[int, int]]:
        raise NotImplementedError

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
        model_type = backbone_config.pop("model_type")
        self.model = self.model_class(CONFIG_MAPPING[model_type](**backbone_config))
        self.patch_size = self.model.config.patch_size
        self.check_layers()
        self.freeze()

    @property
    def num_blocks(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def feature_dims(self) -> list[int]:
        return [self.model.config.hidden_size] * len(self.layers)

    def grid_sizes(self, image_size: int) -> list[tuple[int, int]]:
        side = image_size // self.patch_size
        return [(side, side)] * len(self.layers)

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


class Dinov2Adapter(_HFViTAdapter):
    family = "dinov2"
    model_class = Dinov2Model


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
        self._num_blocks = int(vision_cfg["layers"])
        self._width = int(vision_cfg["width"])
        self.check_layers()
        self.freeze()

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def feature_dims(self) -> list[int]:
        return [self._width] * len(self.layers)

    def grid_sizes(self, image_size: int) -> list[tuple[int, int]]:
        side = image_size // self.patch_size
        return [(side, side)] * len(self.layers)

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


class TimmCNNAdapter(BackboneAdapter):
    """timm ``features_only`` CNNs: each tapped stage keeps its own grid and width.

    ``layers`` index timm's ``feature_info`` entries, 1-indexed: for ResNets entry 1 is the
    stem (stride 2) and entries 2..4 are ``layer1``..``layer3`` (PatchCore's taps).
    """

    family = "timm"

    def __init__(self, config) -> None:
        super().__init__(config)
        _require(timm, "timm", "timm")
        kwargs = dict(config.backbone_config)
        self.model_name = kwargs.pop("model_name")
        probe = timm.create_model(self.model_name, pretrained=False, features_only=True, **kwargs)
        self._num_blocks = len(probe.feature_info)
        self.check_layers()
        self.model = timm.create_model(
            self.model_name, pretrained=False, features_only=True, out_indices=[layer - 1 for layer in self.layers], **kwargs
        )
        self._dims = list(self.model.feature_info.channels())
        self._reductions = list(self.model.feature_info.reduction())
        self.patch_size = min(self._reductions)
        self.freeze()

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def feature_dims(self) -> list[int]:
        return list(self._dims)

    def grid_sizes(self, image_size: int) -> list[tuple[int, int]]:
        # Convolution stages round up odd sizes; probe once instead of guessing padding rules.
        with torch.no_grad():
            probe = torch.zeros(1, 3, image_size, image_size, device=next(self.model.parameters()).device)
            return [tuple(f.shape[-2:]) for f in self.model(probe)]

    def tap(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return [f.flatten(2).transpose(1, 2) for f in self.model(pixel_values)]

    def load_pretrained(self, source: str, pretrained_tag: Optional[str] = None) -> None:
        state = torch.load(source, map_location="cpu", weights_only=True) if source.endswith((".pt", ".pth", ".bin")) else None
        if state is None:
            real = timm.create_model(source, pretrained=True, features_only=True, out_indices=[l - 1 for l in self.layers])
            state = real.state_dict()
        self.model.load_state_dict(state)
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
