"""Pictures of a run: anomaly-map overlays (w/o vs w/ side by side) and the mean-metric bar chart.

Matplotlib's object API with the Agg canvas (``Figure`` + ``FigureCanvasAgg``), never
``pyplot``: no global backend switch, nothing opens a window, and it works headless.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .config import METRICS
from .report import DISPLAY_NAMES, KIND_LABELS, METRIC_LABELS

HEATMAP_ALPHA = 0.5
HEATMAP_CMAP = "jet"
CONTOUR_COLOR = "white"
FIGURE_DPI = 100
KIND_COLORS = {"backbone": "#9e9e9e", "pretrained": "#1f77b4"}


def pick_overlay_indices(labels: Sequence[int], count: int) -> list[int]:
    """``count`` test positions: anomalous images first (spread evenly over them), then normal ones."""
    anomalous = [i for i, label in enumerate(labels) if label == 1]
    normal = [i for i, label in enumerate(labels) if label != 1]
    picked: list[int] = []
    for group in (anomalous, normal):
        take = min(count - len(picked), len(group))
        if take > 0:
            picked += [group[int(j)] for j in np.linspace(0, len(group) - 1, take).round().astype(int)]
    return picked


def to_display(pixel_values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the processor's normalisation: ``[3, H, W]`` -> ``[H, W, 3]`` in [0, 1]."""
    image = pixel_values.float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"


def save_overlays(
    out_dir: Path,
    category: str,
    pixel_values: torch.Tensor,
    masks: torch.Tensor,
    sample_ids: Sequence[str],
    scores: dict[tuple[str, str], torch.Tensor],
    maps: dict[tuple[str, str], torch.Tensor],
    ranges: dict[tuple[str, str], tuple[float, float]],
    methods: Sequence[str],
    kinds: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
) -> list[Path]:
    """One PNG per selected test image: a row per method; columns image + GT, then each kind's heatmap.

    ``pixel_values [M, 3, H, W]`` and ``masks [M, H, W]`` are the selected images;
    ``maps[(method, kind)] [M, H, W]`` their maps, ``scores[(method, kind)] [M]`` their image
    scores, ``ranges[(method, kind)]`` the (min, max) over *all* test maps of that cell (so a
    normal image looks calm next to an anomalous one).
    """
    folder = out_dir / "overlays" / _safe_name(category)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, sample_id in enumerate(sample_ids):
        image = to_display(pixel_values[i], mean, std)
        mask = masks[i].numpy()
        fig = Figure(figsize=(2.4 * (1 + len(kinds)), 2.4 * len(methods)), dpi=FIGURE_DPI)
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(methods), 1 + len(kinds), squeeze=False)
        for row, method in enumerate(methods):
            axes[row][0].imshow(image)
            if mask.any():
                axes[row][0].contour(mask, levels=[0.5], colors=CONTOUR_COLOR, linewidths=0.8)
            axes[row][0].set_title(f"{DISPLAY_NAMES.get(method, method)}: input + GT", fontsize=8)
            for col, kind in enumerate(kinds, start=1):
                ax = axes[row][col]
                low, high = ranges[(method, kind)]
                heat = (maps[(method, kind)][i].numpy() - low) / max(high - low, 1e-12)
                ax.imshow(image)
                ax.imshow(heat, cmap=HEATMAP_CMAP, alpha=HEATMAP_ALPHA, vmin=0.0, vmax=1.0)
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors=CONTOUR_COLOR, linewidths=0.8)
                ax.set_title(f"{KIND_LABELS[kind]} (score {float(scores[(method, kind)][i]):.3g})", fontsize=8)
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle(f"{category}: {sample_id}", fontsize=9)
        fig.tight_layout()
        path = folder / f"{i:02d}_{_safe_name(sample_id)}.png"
        fig.savefig(path)
        written.append(path)
    return written


def save_comparison_chart(path: Path, mean_results: dict[str, Any], methods: Sequence[str], kinds: Sequence[str], title: Optional[str] = None) -> Path:
    """Bar chart of the mean metrics: a panel per metric, w/o vs w/ bars per method (± std when known)."""
    fig = Figure(figsize=(4.0 * len(METRICS), 3.4), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(METRICS), squeeze=False)[0]
    width = 0.8 / len(kinds)
    positions = np.arange(len(methods))
    for ax, metric in zip(axes, METRICS):
        for j, kind in enumerate(kinds):
            values, errors = [], []
            for method in methods:
                scores = mean_results.get(method, {}).get(kind, {})
                value, error = scores.get(metric), scores.get(f"{metric}_std")
                values.append(np.nan if value is None else 100 * value)
                errors.append(np.nan if error is None else 100 * error)
            has_error = not np.isnan(errors).all()
            ax.bar(positions + (j - (len(kinds) - 1) / 2) * width, values, width, yerr=errors if has_error else None,
                   capsize=3, label=KIND_LABELS[kind], color=KIND_COLORS.get(kind))
        ax.set_xticks(positions, [DISPLAY_NAMES.get(m, m) for m in methods], rotation=20, fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title(f"mean {METRIC_LABELS[metric]} (%)", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path
