"""Feature-norm diagnostics: do anomalous patches have larger norms than normal ones?

The norm-oriented loss trains exactly that, and FeatureNorm relies on it; the backbone's raw
features do not have it (the paper's ~50 AUROC FeatureNorm baseline). This module measures it
per patch, for either feature kind, and draws the two histograms side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from .data.patch_labels import patch_labels
from .extractor import ModelFeatureExtractor


@torch.no_grad()
def patch_norms(extractor: ModelFeatureExtractor, pixel_values: torch.Tensor, masks: torch.Tensor, threshold: float) -> dict[str, np.ndarray]:
    """Norms of every patch of every tapped layer, split by the mask rule: ``{"normal", "anomalous"}``.

    ``pixel_values`` is ``[B, 3, H, W]`` and ``masks`` ``[B, H, W]`` (one mask per image, in order);
    both kinds come back as flat float arrays (either may be empty).
    """
    if pixel_values.dim() != 4 or pixel_values.shape[0] == 0:
        raise ValueError(
            f"pixel_values must be a non-empty [B, 3, H, W] batch, got shape {list(pixel_values.shape)}: "
            "pass at least one image"
        )
    if len(masks) != pixel_values.shape[0]:
        raise ValueError(
            f"got {len(masks)} masks for {pixel_values.shape[0]} images: pass one mask per image, in the same order"
        )
    normal, anomalous = [], []
    for start in range(0, pixel_values.shape[0], 16):
        feats = extractor(pixel_values[start : start + 16])
        batch_masks = masks[start : start + 16]
        for feat in feats:
            norms = feat.norm(dim=1).flatten(1)  # [b, h*w]
            labels = patch_labels(batch_masks, tuple(feat.shape[-2:]), threshold)
            normal.append(norms[~labels].cpu().numpy())
            anomalous.append(norms[labels].cpu().numpy())
    return {"normal": np.concatenate(normal), "anomalous": np.concatenate(anomalous)}


def norm_separation(norms: dict[str, np.ndarray]) -> Optional[float]:
    """Patch-level AUROC of the norm as a score (0.5 = no information); None without both kinds."""
    if len(norms["normal"]) == 0 or len(norms["anomalous"]) == 0:
        return None
    scores = np.concatenate([norms["normal"], norms["anomalous"]])
    labels = np.concatenate([np.zeros(len(norms["normal"])), np.ones(len(norms["anomalous"]))])
    return float(roc_auc_score(labels, scores))


def plot_norm_histograms(by_kind: dict[str, dict[str, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """One panel per feature kind: histograms of normal vs anomalous patch norms.

    ``by_kind`` maps a kind ("backbone", "pretrained") to :func:`patch_norms`' output. A kind with
    no anomalous (or no normal) patches draws that histogram empty and its title without an AUROC;
    a kind with no patches at all is a ValueError.
    """
    if not by_kind:
        raise ValueError("by_kind is empty: pass at least one feature kind, e.g. {'backbone': patch_norms(...)}")
    for kind, norms in by_kind.items():
        if len(norms["normal"]) + len(norms["anomalous"]) == 0:
            raise ValueError(f"feature kind {kind!r} has no patches: measure it on at least one image before plotting")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(by_kind), figsize=(5 * len(by_kind), 3.5), squeeze=False)
    for ax, (kind, norms) in zip(axes[0], by_kind.items()):
        everything = np.concatenate([norms["normal"], norms["anomalous"]])
        bins = np.linspace(float(everything.min()), float(np.percentile(everything, 99.5)) + 1e-6, 50)
        for name in ("normal", "anomalous"):  # density of an empty histogram would divide by zero
            values = norms[name]
            ax.hist(values, bins=bins, alpha=0.6, density=len(values) > 0, label=f"{name} ({len(values)})")
        auc = norm_separation(norms)
        ax.set_title(f"{kind} features: patch-norm AUROC {auc:.3f}" if auc is not None else kind)
        ax.set_xlabel("feature norm")
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
