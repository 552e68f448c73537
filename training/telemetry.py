"""Training shows its phase (issue 20): where the projected patches sit against the hypersphere.

With the release's loss the norm term starts hundreds of times the angle term and dominates until
the normal patches are inside the radius r; a model evaluated in that first phase has not started
to separate by angle. Per layer and logged step, over both views of the batch (each view with the
radius its norm loss used, ``effective_radius``):

    phase/normal_inside_r/layer_l        share of normal patches with n <= r
    phase/anomalous_beyond/layer_l       share of anomalous patches with n >= r + Delta r
    phase/norm_normal/layer_l            mean n of the normal patches
    phase/norm_anomalous/layer_l         mean n of the anomalous patches
    phase/norm_angle_ratio/layer_l       (norm view 1 + norm view 2) / |angle| (None when angle = 0)
    phase/radius/layer_l                 the radius r the norm loss used, mean over the two views (with
                                         the release's adaptive cap, 0.9 x the batch's smallest
                                         anomalous n, r follows the anomalous patches down)

``n`` is the loss's own norm (``feature_norm`` of ``norm_kind``, the quantity compared with r);
patches are labelled by the norm term's labels. A share is None when the batch holds no patch of
that kind. Values go to ``metrics.jsonl``, the tracker and the progress bar.

:class:`PhaseStopRule` is OUR optional stop rule, not the paper's (which trains a fixed schedule):
stop once at least ``share`` of the normal patches sit inside r at EVERY layer for ``patience``
consecutive logged steps. Off by default (``PretrainArguments.stop_normal_inside_share=None``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch

from adpretrain_hf.losses import ADPretrainLoss, effective_radius, feature_norm

PREFIX = "phase"
_COUNTS = ("inside", "normal", "beyond", "anomalous", "norm_sum_normal", "norm_sum_anomalous", "radius_sum", "views")


@torch.no_grad()
def phase_counts(
    views: Sequence[Sequence[torch.Tensor]], norm_labels: Sequence[torch.Tensor], loss_fn: ADPretrainLoss
) -> torch.Tensor:
    """Per layer the sums behind the shares, ``[L, 8]`` float64 (inside, normal, beyond, anomalous,
    norm sum of normals, norm sum of anomalous, sum of the views' radii, views), so that processes
    can add them before dividing.

    ``views``: the two views' per-layer ``[B, N_l, D_l]`` projected features; ``norm_labels``: per
    layer ``[B, N_l]`` bool, True = anomalous.
    """
    options = loss_fn.options
    rows = []
    for layer, labels in enumerate(norm_labels):
        counts = torch.zeros(len(_COUNTS), dtype=torch.float64, device=labels.device)
        for view in views:
            n = feature_norm(view[layer].detach().float(), options.norm_kind)  # [B, N_l]
            r = effective_radius(n, labels, options.hypersphere_radius, options.adaptive_radius)
            normal = ~labels
            counts += torch.stack([
                (normal & (n <= r)).sum(), normal.sum(), (labels & (n >= r + options.abnormal_margin)).sum(), labels.sum(),
                n[normal].sum(), n[labels].sum(), r, torch.ones_like(r),
            ]).to(torch.float64)
        rows.append(counts)
    return torch.stack(rows)


def _share(part: float, whole: float) -> Optional[float]:
    return part / whole if whole > 0 else None


def phase_record(counts: torch.Tensor, angle: Sequence[float], norm_views: Sequence[float]) -> dict[str, Any]:
    """``{"phase/<name>/layer_l": value}`` from :func:`phase_counts` (summed over processes) and the
    per-layer angle term and summed norm terms (view 1 + view 2)."""
    record: dict[str, Any] = {}
    for layer, row in enumerate(counts.tolist()):
        inside, normal, beyond, anomalous, sum_normal, sum_anomalous, radius_sum, views = row
        record[f"{PREFIX}/normal_inside_r/layer_{layer}"] = _share(inside, normal)
        record[f"{PREFIX}/anomalous_beyond/layer_{layer}"] = _share(beyond, anomalous)
        record[f"{PREFIX}/norm_normal/layer_{layer}"] = _share(sum_normal, normal)
        record[f"{PREFIX}/norm_anomalous/layer_{layer}"] = _share(sum_anomalous, anomalous)
        record[f"{PREFIX}/norm_angle_ratio/layer_{layer}"] = norm_views[layer] / abs(angle[layer]) if angle[layer] else None
        record[f"{PREFIX}/radius/layer_{layer}"] = _share(radius_sum, views)
    return record


def layer_values(record: dict[str, Any], name: str) -> list[Optional[float]]:
    """The per-layer values of one telemetry ``name`` (e.g. ``"normal_inside_r"``), in layer order."""
    prefix = f"{PREFIX}/{name}/layer_"
    keys = sorted((k for k in record if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))
    return [record[k] for k in keys]


def progress_summary(record: dict[str, Any]) -> dict[str, str]:
    """Short progress-bar fields: the worst layer's share inside r and beyond r + Delta r."""
    summary = {}
    for name, short in (("normal_inside_r", "in_r"), ("anomalous_beyond", "out_r")):
        values = [v for v in layer_values(record, name) if v is not None]
        if values:
            summary[short] = f"{min(values):.2f}"
    return summary


class PhaseStopRule:
    """Ours, not the paper's: stop when >= ``share`` of the normal patches sit inside r at every
    layer for ``patience`` consecutive logged steps (a layer with no normal patch does not count
    as done).

    Args:
        share: the required share in (0, 1].  patience: consecutive logged steps (>= 1).
    """

    def __init__(self, share: float, patience: int) -> None:
        if not 0.0 < float(share) <= 1.0:
            raise ValueError(f"share={share!r} is invalid: pass a fraction in (0, 1], e.g. 0.9")
        if isinstance(patience, bool) or int(patience) != patience or patience < 1:
            raise ValueError(f"patience={patience!r} is invalid: pass a number of logged steps >= 1")
        self.share, self.patience = float(share), int(patience)
        self.streak = 0

    def update(self, record: dict[str, Any]) -> bool:
        """Feed one logged step's record; True when training should stop now."""
        values = layer_values(record, "normal_inside_r")
        done = bool(values) and all(v is not None and v >= self.share for v in values)
        self.streak = self.streak + 1 if done else 0
        return self.streak >= self.patience


