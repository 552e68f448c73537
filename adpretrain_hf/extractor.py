"""The one feature source of every downstream detector.

``features="backbone"`` gives the frozen backbone's own multi-layer features (the "w/o"
columns of the paper's Table 1); ``features="pretrained"`` gives ADPretrain's projected
residual features (the "w/" columns). Same model, same layers, same code path otherwise.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .modeling.anomaly_map_adpretrain import tokens_to_grid
from .modeling.modeling_adpretrain import ADPretrainModel

FEATURE_KINDS = ("backbone", "pretrained")


class ModelFeatureExtractor:
    """Callable ``pixel_values [B, 3, H, W] -> list of [B, C_l, h_l, w_l]`` (float32).

    Args:
        model: an :class:`ADPretrainModel`.
        features: ``"pretrained"`` or ``"backbone"``.
        layers: indices into the model's tapped layers to return (default: all).
        device, dtype: where and in which precision the model runs (bf16 on a GPU is fine;
            outputs are always float32).
    """

    def __init__(
        self,
        model: ADPretrainModel,
        features: str = "pretrained",
        layers: Optional[Sequence[int]] = None,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        if features not in FEATURE_KINDS:
            raise ValueError(f"features={features!r} is not supported: choose one of {FEATURE_KINDS}")
        self.model = model.eval()
        if device is not None or dtype is not None:
            self.model.to(device=device, dtype=dtype)
        self.kind = features
        num_layers = len(model.config.layers)
        self.layers = list(range(num_layers)) if layers is None else list(layers)
        bad = [i for i in self.layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"layer indices {bad} are out of range: the model taps {num_layers} layers (0..{num_layers - 1})")
        size = model.config.image_size
        self.image_size = (size, size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.projectors.parameters()).dtype

    @property
    def needs_references(self) -> bool:
        return self.kind == "pretrained" and self.model.config.use_residual

    def set_references(self, reference_pixel_values: torch.Tensor) -> None:
        """Normal reference images ``[K, 3, H, W]`` for the residuals (ignored for backbone features)."""
        if self.needs_references:
            self.model.set_references(reference_pixel_values.to(device=self.device, dtype=self.dtype))

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        if self.kind == "backbone":
            self.model.check_pixel_values(pixel_values)
            tokens = self.model.backbone(pixel_values)
        else:
            if self.needs_references and self.model.reference_bank is None:
                raise ValueError("pretrained features need normal references: call extractor.set_references(normal_pixel_values)")
            tokens = self.model(pixel_values, output_anomaly_map=False).features
        grids = self.model.grid_sizes
        return [tokens_to_grid(tokens[i].float(), grids[i]) for i in self.layers]
