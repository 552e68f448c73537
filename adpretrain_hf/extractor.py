"""The one feature source of every downstream detector.

``feature_kind="backbone"`` gives the frozen backbone's own multi-layer features (the "w/o"
columns of the paper's Table 1); ``feature_kind="residual"`` the residual features (each token
minus its nearest normal reference token) without a projector (Table 2's first row);
``feature_kind="pretrained"`` ADPretrain's projected residual features (the "w/" columns).
Same model, same layers, same pass: one forward yields all three
(:func:`feature_pass`), so a cache (:class:`FeatureSource`) can serve every kind from it.

References travel with the extractor as a
:class:`~adpretrain_hf.modeling.reference_bank_adpretrain.ReferenceBank` value and go to
``model.forward(reference_features=...)``; the extractor never stores state on the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import torch

from .modeling.anomaly_map_adpretrain import tokens_to_grid
from .modeling.configuration_adpretrain import FEATURE_KINDS
from .modeling.modeling_adpretrain import ADPretrainModel
from .modeling.reference_bank_adpretrain import ReferenceBank, batch_keys, leave_one_out_groups

REFERENCE_KINDS = ("residual", "pretrained")  # kinds whose features depend on the references

TokenLayers = list[torch.Tensor]  # per tapped layer: [B, N_l, C_l]


@dataclass
class FeaturePass:
    """Every feature kind of one batch, per layer ``[B, N_l, C_l]`` in the model's dtype."""

    backbone: TokenLayers
    residual: Optional[TokenLayers] = None
    pretrained: Optional[TokenLayers] = None

    def get(self, kind: str) -> TokenLayers:
        value = getattr(self, kind)
        if value is None:
            raise ValueError(f"{kind} features were not computed in this pass: pass references (a ReferenceBank)")
        return value


@torch.no_grad()
def feature_pass(
    model: ADPretrainModel,
    pixel_values: torch.Tensor,
    bank: Optional[ReferenceBank],
    backbone_tokens: Optional[TokenLayers] = None,
    batch_size: Optional[int] = None,
) -> FeaturePass:
    """One pass over ``pixel_values [B, 3, H, W]`` giving backbone, residual and projected tokens.

    The model's public steps, as ``forward`` composes them (without the anomaly map):
    ``backbone_features`` (in chunks of ``batch_size``; skipped when ``backbone_tokens`` were
    cached earlier), ``residuals``, ``project``. Without a bank only the backbone tokens come
    back (when the model needs references).
    """
    tokens = backbone_tokens if backbone_tokens is not None else model.backbone_features(pixel_values, batch_size)
    if bank is None and model.config.needs_references:
        return FeaturePass(list(tokens))
    reference_features = None if bank is None else list(bank.layers)
    residuals = model.residuals(tokens, reference_features)
    return FeaturePass(list(tokens), residuals, model.project(residuals, reference_features))


class FeatureSource(Protocol):
    """Where an extractor gets tokens from: a cache keyed by image content and reference set."""

    def tokens(
        self, model: ADPretrainModel, kind: str, pixel_values: torch.Tensor, bank: Optional[ReferenceBank],
        batch_size: Optional[int] = None, image_keys: Optional[Sequence[str]] = None,
    ) -> TokenLayers:
        """Per layer ``[B, N_l, C_l]`` of ``kind`` for ``pixel_values [B, 3, H, W]`` (on the model's device);
        the backbone runs ``batch_size`` images at a time (``model.backbone_features``). ``image_keys``:
        the images' :func:`batch_keys` when the caller has them (``None``: computed if needed)."""
        ...


class ModelFeatureExtractor:
    """Callable ``pixel_values [B, 3, H, W] -> list of [B, C_l, h_l, w_l]`` (float32).

    Args:
        model: an :class:`ADPretrainModel`.
        feature_kind: ``"backbone"``, ``"residual"`` or ``"pretrained"`` (``FEATURE_KINDS``).
        layer_positions: 0-based positions in the model's list of tapped layers to return
            (default: all), e.g. ``[0, 2]`` for the 1st and 3rd of ``config.layers``.
        device, dtype: where and in which precision the model runs (bf16 on a GPU is fine;
            outputs are always float32).
        references: the normal reference bank (residual/pretrained kinds); ``None`` falls back
            to a bank kept on the model by ``model.set_references``.
        source: a feature cache shared by several extractors (``None``: compute every call).
    """

    def __init__(
        self,
        model: ADPretrainModel,
        feature_kind: str = "pretrained",
        layer_positions: Optional[Sequence[int]] = None,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
        references: Optional[ReferenceBank] = None,
        source: Optional[FeatureSource] = None,
    ) -> None:
        if feature_kind not in FEATURE_KINDS:
            raise ValueError(f"feature_kind={feature_kind!r} is not supported: choose one of {FEATURE_KINDS}")
        self.model = model.eval()
        if device is not None or dtype is not None:
            self.model.to(device=device, dtype=dtype)
        self.feature_kind = feature_kind
        num_layers = len(model.config.layers)
        self.layer_positions = list(range(num_layers)) if layer_positions is None else list(layer_positions)
        bad = [i for i in self.layer_positions if not 0 <= i < num_layers]
        if bad:
            raise ValueError(
                f"layer positions {bad} are out of range: the model taps {num_layers} layers (positions 0..{num_layers - 1}); "
                "pass 0-based positions, not block numbers"
            )
        size = model.config.image_size
        self.image_size = (size, size)
        self.references = references
        self.source = source

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.projectors.parameters()).dtype

    @property
    def needs_references(self) -> bool:
        return self.feature_kind in REFERENCE_KINDS and self.model.config.needs_references

    def set_references(self, reference_pixel_values: torch.Tensor) -> None:
        """Normal reference images ``[K, 3, H, W]`` for the residuals (ignored for backbone features)."""
        if self.needs_references:
            self.references = ReferenceBank.from_pixels(self.model, reference_pixel_values)

    def with_references(self, references: Optional[ReferenceBank]) -> "ModelFeatureExtractor":
        """The same extractor (model, kind, layer positions, cache) with another reference bank."""
        return ModelFeatureExtractor(self.model, self.feature_kind, self.layer_positions, references=references, source=self.source)

    def reference_bank(self) -> Optional[ReferenceBank]:
        """The bank residual/pretrained features are computed against (``None`` when none is needed)."""
        if not self.needs_references:
            return self.references
        if self.references is not None:
            return self.references
        kept = self.model.reference_bank
        if kept is None:
            raise ValueError("residual/pretrained features need normal references: call extractor.set_references(normal_pixel_values)")
        return kept

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, image_keys: Optional[Sequence[str]] = None) -> list[torch.Tensor]:
        """``image_keys``: the batch's :func:`batch_keys` when the caller has them; otherwise they are
        computed here at most once per call (for a cache, or for leave-one-out) and passed down."""
        self.model.check_pixel_values(pixel_values)
        bank = self.reference_bank() if self.feature_kind in REFERENCE_KINDS else None
        if image_keys is None and self.source is not None:  # keyed by the pixels as given (before any dtype cast)
            image_keys = batch_keys(pixel_values)
        groups = leave_one_out_groups(pixel_values, bank, keys=image_keys)
        if len(groups) == 1:
            tokens = self._tokens(pixel_values, bank, image_keys)
        else:  # some images are references themselves: each of those against the others only
            tokens = [None] * len(self.model.grid_sizes)
            for rows, group_bank in groups:
                keys = None if image_keys is None else [image_keys[i] for i in rows.tolist()]
                part = self._tokens(pixel_values[rows], group_bank, keys)
                for i, layer in enumerate(part):
                    if tokens[i] is None:
                        tokens[i] = layer.new_empty((pixel_values.shape[0], *layer.shape[1:]))
                    tokens[i][rows.to(layer.device)] = layer
        grids = self.model.grid_sizes
        return [tokens_to_grid(tokens[i].float(), grids[i]) for i in self.layer_positions]

    def _tokens(self, pixel_values: torch.Tensor, bank: Optional[ReferenceBank], image_keys: Optional[Sequence[str]]) -> TokenLayers:
        """Per layer ``[B, N_l, C_l]`` of this extractor's kind against ``bank``."""
        if self.source is not None:
            return self.source.tokens(self.model, self.feature_kind, pixel_values, bank, image_keys=image_keys)
        if self.feature_kind == "backbone":  # backbone_features moves the pixels to the model's device and dtype
            return self.model.backbone_features(pixel_values)
        return feature_pass(self.model, pixel_values, bank).get(self.feature_kind)
