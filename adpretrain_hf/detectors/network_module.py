"""``NetworkModule``: the scoring module of a trained detector (CFLOW, GLASS, UniAD).

A trained method's fitted state is a network (its parameters and buffers, which also carry
the fit-time constants: CFLOW's normalisers, GLASS's centre). The module holds that network
and the two facts that rebuild it, the method's config and the fitted layer layout, as its
``settings()``; ``forward`` is :class:`DetectorModule`'s (grids -> map -> score). The training
loop (``trained.py``) trains the network and hands it over; a detector folder rebuilds it from
the settings and loads the weights.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch
from torch import nn

from ..modeling.anomaly_map_adpretrain import GAUSSIAN_SIGMA
from ..modeling.detector_module_adpretrain import DetectorModule, check_finite
from .trained_config import TrainedConfig

__all__ = ["LayerShapes", "NetworkModule"]

LayerShapes = list[tuple[int, int, int]]  # per layer (C_l, h_l, w_l)
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class NetworkModule(DetectorModule):
    """Base of the trained methods' modules.

    Args:
        config: the method's config (a ``config_class`` or its ``asdict``).
        layer_shapes: ``(C_l, h_l, w_l)`` of the layers it was fitted on.
        net: the trained network; None builds an untrained one (to load weights into).
        sigma: the map's Gaussian smoothing.
    """

    config_class: ClassVar[type[TrainedConfig]] = TrainedConfig

    def __init__(
        self, *, config: Any, layer_shapes: Sequence[Sequence[int]], net: Optional[nn.Module] = None,
        sigma: float = GAUSSIAN_SIGMA,
    ) -> None:
        super().__init__(sigma=sigma)
        if isinstance(config, dict):
            config = self.config_class.from_dict(config)
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__} (or its dict), got {type(config).__name__}")
        config.validate()
        shapes = [tuple(int(v) for v in shape) for shape in layer_shapes]
        if not shapes or any(len(shape) != 3 or min(shape) < 1 for shape in shapes):
            raise ValueError(f"layer_shapes must be a non-empty list of positive (C, h, w), got {layer_shapes!r}")
        self.config, self.layer_shapes = config, shapes
        self.net = self.build_net() if net is None else net
        self.autocast_factory: Optional[Callable[[], Any]] = None  # the fitting code's accelerator.autocast

    def settings(self) -> dict:
        return {**super().settings(), "config": asdict(self.config), "layer_shapes": [list(s) for s in self.layer_shapes]}

    def build_net(self) -> nn.Module:
        """The untrained network for ``self.layer_shapes`` and ``self.config``."""
        raise NotImplementedError

    def check_fitted(self) -> None:
        """Every weight and fit-time constant of the network finite."""
        for name, value in self.net.state_dict().items():
            check_finite(value, f"the {self.method} network's {name!r}", "retrain with a lower learning rate or refit")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The fitting code's autocast, else the config's mixed precision (fp16/bf16), else none."""
        if self.autocast_factory is not None:
            return self.autocast_factory()
        dtype = AUTOCAST_DTYPES.get(self.config.mixed_precision or "no")
        if dtype is None:
            return contextlib.nullcontext()
        device = next(self.net.parameters()).device
        return torch.autocast(device.type, dtype=dtype)

    def check_layout(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Features of one batch checked against the fitted layout, as float32."""
        got = [tuple(f.shape[1:]) for f in features]
        if got != self.layer_shapes:
            raise ValueError(
                f"features do not match the fitted layout: fitted on (C, h, w) per layer {self.layer_shapes}, got {got}; "
                "use the same extractor (layers, image size) as at fit"
            )
        return [f.float() for f in features]
