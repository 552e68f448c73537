"""The light CNN whose early-stage features drive semantic-aligned matching (appendix C).

Default: torchvision ResNet-18 up to ``layer1`` (conv1, bn1, relu, maxpool, layer1), which
maps ``[N, 3, H, W]`` to ``[N, 64, H/4, W/4]`` (``[N, 64, 56, 56]`` at 224 px). Early
features describe local layout (edges, blobs, orientation) rather than class semantics,
which is what "is this object placed and turned like that one" needs, and they are cheap.
Weights are never downloaded: the user supplies a state dict (or a module); without one
the network is randomly initialised, which still encodes local layout but is not what the
paper uses.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Union

import torch
from torch import nn

RESNET18_STEM = ("conv1", "bn1", "relu", "maxpool", "layer1")
"""ResNet children kept for the early-stage features, in forward order."""

FeatureNetSpec = Union[None, str, "os.PathLike[str]", nn.Module]


def _resnet18_stem_from(resnet: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict((name, getattr(resnet, name)) for name in RESNET18_STEM))


def default_stem() -> nn.Sequential:
    """A randomly initialised ResNet-18 stem + layer1 (no warning; for loading saved weights)."""
    from torchvision.models import resnet18

    return _resnet18_stem_from(resnet18(weights=None))


def _load_state_dict(path: Union[str, "os.PathLike[str]"]) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"feature_net weights file not found: {path!r}; pass the path of a ResNet-18 state dict")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(state).__name__}): save model.state_dict()")
    return state


def build_feature_net(feature_net: FeatureNetSpec = None) -> tuple[nn.Module, bool]:
    """Resolve the ``feature_net`` argument of the matcher into ``(module, is_random_init)``.

    Accepts:
        * ``None``: ResNet-18 stem + layer1, random init, with a warning.
        * a path (``.safetensors`` or a ``torch.save``-d state dict) of a torchvision/timm
          ResNet-18 state dict (the full network's or just stem + layer1 keys).
        * a ``torch.nn.Module``: a ResNet (has ``conv1 ... layer1``; its stem + layer1 are used,
          sharing its weights), or any other early-stage network mapping
          ``[N, 3, H, W] -> [N, C1, H1, W1]``, used as it is.
    """
    if feature_net is None:
        warnings.warn(
            "SemanticAlignedMatcher uses a randomly initialised ResNet-18: pass feature_net= "
            "(a ResNet-18 state-dict path or module) with pretrained weights for meaningful matches",
            UserWarning,
            stacklevel=3,
        )
        return default_stem(), True
    if isinstance(feature_net, nn.Module):
        if all(hasattr(feature_net, name) for name in RESNET18_STEM):
            return _resnet18_stem_from(feature_net), False
        return feature_net, False
    if isinstance(feature_net, (str, os.PathLike)):
        from torchvision.models import resnet18

        resnet = resnet18(weights=None)
        try:
            result = resnet.load_state_dict(_load_state_dict(feature_net), strict=False)
            problem = ""
        except RuntimeError as error:  # shape mismatches
            result, problem = None, str(error).splitlines()[-1].strip()
        if result is not None:
            missing = [key for key in result.missing_keys if key.split(".")[0] in RESNET18_STEM]
            if missing or result.unexpected_keys:
                problem = f"missing {missing[:4]}, unexpected {list(result.unexpected_keys)[:4]}"
        if problem:
            raise ValueError(
                f"{os.fspath(feature_net)!r} is not a ResNet-18 state dict ({problem}): pass torchvision's "
                "resnet18 weights, or a torch.nn.Module as feature_net"
            )
        return _resnet18_stem_from(resnet), False
    raise TypeError(
        f"feature_net must be None, a state-dict path or a torch.nn.Module, got {type(feature_net).__name__}"
    )
