"""Total pretraining loss over the tapped layers, Eq. (7) of the paper.

Per layer ``l`` with ``P_l = B * N_l`` features per view (the paper's ``N``), Eq. (7) reads

    L_l = 1 / (2 P_l) * sum_{i=1}^{2 P_l} [ lambda * I[i <= P_l] * L_angle(x_i) + L_norm(x_i) ]
        = lambda / 2 * mean_{i <= P_l} L_angle(x_i) + (mean_view1 L_norm + mean_view2 L_norm) / 2

and the loss is ``sum_l L_l`` (contrastive learning on each level, footnote 4).

``normalization="paper"`` implements exactly this. With ``anchors="both"`` the indicator is
dropped, the angle sum runs over all ``2 P_l`` anchors, and the same ``1 / (2 P_l)`` gives
``lambda * mean_{i <= 2 P_l} L_angle``.

``normalization="release"`` is the released code's sum:
``L_l = lambda * mean_anchors L_angle + mean_view1 L_norm + mean_view2 L_norm`` - for
``anchors="first"`` exactly twice Eq. (7) (the angle mean is over view-1 anchors); for
``anchors="both"`` the angle keeps weight ``lambda`` and the norm terms get twice Eq. (7)'s.
The release also skips batches with no anomalous image; here such a batch gives angle 0 and a
norm loss over normal features only, and ``num_anomalous`` lets a training loop skip it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..modeling.loss_options_adpretrain import LossOptions, check_positive
from ._checks import check_center, check_chunk_size, check_features, check_labels
from .angle import angle_contrastive_loss
from .constants import DEFAULT_MAX_BLOCK_ELEMENTS
from .norm import norm_contrastive_loss

__all__ = ["ADPretrainLoss", "ADPretrainLossOutput"]

@dataclass
class ADPretrainLossOutput:
    """Result of ``ADPretrainLoss``.

    Attributes:
        loss: scalar to backpropagate, ``sum_l layer_loss[l]``.
        layer_loss: per layer, the (detached) contribution to ``loss``.
        angle: per layer, the detached angle loss averaged over its anchors (0 when no anchor
            has a negative).
        norm: per layer, the detached norm loss averaged over the ``2 B N_l`` features of both views.
        num_anomalous: per layer, the number of anomalous patches per view (0-d int tensor).
        norm_views: per layer, the detached norm loss of view 1 and of view 2 (as the loss
            reduces each view, before any weighting).
    """

    loss: torch.Tensor
    layer_loss: tuple[torch.Tensor, ...]
    angle: tuple[torch.Tensor, ...]
    norm: tuple[torch.Tensor, ...]
    num_anomalous: tuple[torch.Tensor, ...]
    norm_views: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()


def _as_list(name: str, value: Sequence[torch.Tensor] | torch.Tensor) -> list:
    if isinstance(value, torch.Tensor) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be a list with one tensor per tapped layer, got {type(value).__name__}: "
            f"wrap a single layer as [{name}]"
        )
    return list(value)


class ADPretrainLoss(nn.Module):
    """Angle- plus norm-oriented contrastive loss over all tapped layers (Eq. 7).

    Args:
        options: the loss's options (``LossOptions``: tau, r, Delta r, lambda, the norm terms'
            weight, the paper's or the release's form); defaults to ``LossOptions()``, the same
            as ``ADPretrainConfig()``'s. ``modeling.loss_options_adpretrain.RELEASE_LOSS_OPTIONS``
            reproduces the release's loss (``tests/release_parity/test_losses.py``, with the
            release's two label rules passed as ``labels`` / ``norm_labels``);
            ``PAPER_LOSS_OPTIONS`` is the paper's.
        chunk_size, max_block_elements: memory control of the angle loss (see its docstring).

    Build the loss of a model with :meth:`from_config`.
    """

    @classmethod
    def from_config(cls, config: Any, **runtime: Any) -> "ADPretrainLoss":
        """The loss an ``ADPretrainConfig`` describes (``config.loss_options()``); ``runtime`` adds
        memory controls (``chunk_size``, ``max_block_elements``)."""
        if not callable(getattr(config, "loss_options", None)):
            raise ValueError(f"{type(config).__name__} has no loss fields (loss_options()): pass an ADPretrainConfig")
        return cls(config.loss_options(), **runtime)

    def __init__(
        self,
        options: LossOptions | None = None,
        *,
        chunk_size: int | None = None,
        max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
    ) -> None:
        super().__init__()
        if options is not None and not isinstance(options, LossOptions):
            raise TypeError(f"options must be a LossOptions, got {type(options).__name__}: pass LossOptions(...) or build with from_config")
        self.options = LossOptions() if options is None else options
        self.chunk_size = check_chunk_size(chunk_size)
        self.max_block_elements = int(check_positive("max_block_elements", max_block_elements))

    def extra_repr(self) -> str:
        return repr(self.options)

    def _norm(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        o = self.options
        return norm_contrastive_loss(
            features,
            labels,
            radius=o.hypersphere_radius,
            margin=o.abnormal_margin,
            norm_kind=o.norm_kind,
            detach_exp_factor=o.detach_exp_factor,
            adaptive_radius=o.adaptive_radius,
            hinge_normals=o.hinge_normals,
            push_inner_normals=o.push_inner_normals,
            reduction=o.norm_loss_reduction,
        )

    def forward(
        self,
        view1: Sequence[torch.Tensor],
        view2: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        centers: Sequence[torch.Tensor | None] | None = None,
        norm_labels: Sequence[torch.Tensor] | None = None,
    ) -> ADPretrainLossOutput:
        """Loss of one training step.

        Args:
            view1, view2: per layer ``[B, N_l, D_l]`` projected features of the two views.
            labels: per layer ``[B, N_l]`` bool, True = anomalous patch (shared by both views).
            centers: per layer ``[D_l]`` center of the normal features (``None`` entries, or
                ``centers=None``, measure angles around the origin).
            norm_labels: optional per-layer labels for the norm loss only (the release derives
                them with a different mask rule); defaults to ``labels``.

        Returns:
            ``ADPretrainLossOutput``.
        """
        view1, view2, labels = _as_list("view1", view1), _as_list("view2", view2), _as_list("labels", labels)
        num_layers = len(view1)
        centers = [None] * num_layers if centers is None else _as_list("centers", centers)
        norm_labels = labels if norm_labels is None else _as_list("norm_labels", norm_labels)
        if num_layers == 0:
            raise ValueError("no layer given: pass one [B, N_l, D_l] tensor per tapped layer in view1 and view2")
        lengths = {"view2": len(view2), "labels": len(labels), "centers": len(centers), "norm_labels": len(norm_labels)}
        for name, length in lengths.items():
            if length != num_layers:
                raise ValueError(f"view1 has {num_layers} layers but {name} has {length}: pass one entry per tapped layer")

        o = self.options
        total = None
        layer_losses, angles, norms, anomalous, norm_views = [], [], [], [], []
        for layer in range(num_layers):
            v1 = check_features(f"view1[{layer}]", view1[layer])
            v2 = check_features(f"view2[{layer}]", view2[layer])
            if v1.shape != v2.shape:
                raise ValueError(
                    f"view1[{layer}] {tuple(v1.shape)} and view2[{layer}] {tuple(v2.shape)} differ: "
                    "pass the two views of the same images, token for token"
                )
            lab = check_labels(f"labels[{layer}]", labels[layer], v1.shape[:2], v1.device)
            norm_lab = check_labels(f"norm_labels[{layer}]", norm_labels[layer], v1.shape[:2], v1.device)
            center = check_center(f"centers[{layer}]", centers[layer], v1.shape[-1])
            per_view = v1.shape[0] * v1.shape[1]

            angle_sum = angle_contrastive_loss(
                v1,
                v2,
                lab,
                center,
                temperature=self.options.angle_temperature,
                anchors=self.options.angle_anchors,
                reduction="sum",
                chunk_size=self.chunk_size,
                max_block_elements=self.max_block_elements,
            )
            num_anchors = per_view if self.options.angle_anchors == "first" else 2 * per_view
            angle_mean = angle_sum / max(1, num_anchors)
            norm1, norm2 = self._norm(v1, norm_lab), self._norm(v2, norm_lab)
            if self.options.loss_normalization == "paper":
                layer_loss = (o.loss_weight * angle_sum) / max(1, 2 * per_view) + o.norm_loss_weight * (norm1 + norm2) / 2
            else:
                layer_loss = o.loss_weight * angle_mean + o.norm_loss_weight * (norm1 + norm2)
            total = layer_loss if total is None else total + layer_loss
            layer_losses.append(layer_loss.detach())
            angles.append(angle_mean.detach())
            norms.append(((norm1 + norm2) / 2).detach())
            norm_views.append((norm1.detach(), norm2.detach()))
            anomalous.append(lab.sum())
        return ADPretrainLossOutput(
            loss=total,
            layer_loss=tuple(layer_losses),
            angle=tuple(angles),
            norm=tuple(norms),
            num_anomalous=tuple(anomalous),
            norm_views=tuple(norm_views),
        )
