"""Pictures of a run: anomaly-map overlays (w/o vs w/ side by side) and the mean-metric bar chart
(with the paired bootstrap intervals of the differences to w/o).

Overlays are composed with PIL (:mod:`adpretrain_hf.overlays`: a colour lookup table, no
matplotlib figure per image, a few ms each). The one chart per run uses matplotlib's object
API with the Agg canvas (``Figure`` + ``FigureCanvasAgg``), never ``pyplot``: no global
backend switch, nothing opens a window, and it works headless.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from ..overlays import DEFAULT_ALPHA, LABEL_COLOR, PANEL_BACKGROUND, draw_contour, render_overlay

from .config import METRICS
from .report import DISPLAY_NAMES, KIND_LABELS, METRIC_LABELS

MIN_TILE_SIZE = 160  # px: smaller images are upscaled (nearest) so titles and the colour bar fit
TITLE_HEIGHT = 14  # px of a title strip (PIL's default font is about 11 px high)
TILE_GAP = 4  # px between tiles
PNG_COMPRESS_LEVEL = 1  # zlib level: encoding at the default (6) took two thirds of the overlay time
FIGURE_DPI = 100
KIND_COLORS = {"backbone": "#9e9e9e", "residual": "#ff7f0e", "pretrained": "#1f77b4"}


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


def _upscale(array: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ``[H, W, ...]`` by an integer factor (tiny presets' 64 px images)."""
    return array if factor == 1 else np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def _titled(tile: Image.Image, title: str) -> Image.Image:
    """``tile`` under a one-line title strip of ``TITLE_HEIGHT`` px."""
    canvas = Image.new("RGB", (tile.width, tile.height + TITLE_HEIGHT), PANEL_BACKGROUND)
    canvas.paste(tile, (0, TITLE_HEIGHT))
    ImageDraw.Draw(canvas).text((2, 2), title, fill=LABEL_COLOR)
    return canvas


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
    normal image looks calm next to an anomalous one). Rendered with
    :func:`adpretrain_hf.overlays.render_overlay` (PIL, no matplotlib figure per image).
    """
    folder = out_dir / "overlays" / _safe_name(category)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, sample_id in enumerate(sample_ids):
        image = np.round(to_display(pixel_values[i], mean, std) * 255).astype(np.uint8)
        factor = max(1, -(-MIN_TILE_SIZE // image.shape[0]))
        image = _upscale(image, factor)
        mask = _upscale(masks[i].numpy() > 0.5, factor)
        contour = mask if mask.any() else None
        rows = []
        for method in methods:
            name = DISPLAY_NAMES.get(method, method)
            input_tile = Image.fromarray(draw_contour(image, mask) if contour is not None else image)
            row = [_titled(input_tile, f"{name}: input + GT")]
            for kind in kinds:
                low, high = ranges[(method, kind)]
                heat = _upscale(maps[(method, kind)][i].float().numpy(), factor)
                tile = render_overlay(image, heat, vmin=low, vmax=high, pred_mask=contour, alpha=DEFAULT_ALPHA)
                row.append(_titled(tile, f"{KIND_LABELS[kind]} (score {float(scores[(method, kind)][i]):.3g})"))
            rows.append(row)
        width = max(sum(t.width for t in row) + TILE_GAP * (len(row) - 1) for row in rows)
        height = TITLE_HEIGHT + sum(max(t.height for t in row) for row in rows) + TILE_GAP * len(rows)
        sheet = Image.new("RGB", (width, height), PANEL_BACKGROUND)
        ImageDraw.Draw(sheet).text((2, 2), f"{category}: {sample_id}", fill=LABEL_COLOR)
        y = TITLE_HEIGHT + TILE_GAP
        for row in rows:
            x = 0
            for tile in row:
                sheet.paste(tile, (x, y))
                x += tile.width + TILE_GAP
            y += max(t.height for t in row) + TILE_GAP
        path = folder / f"{i:02d}_{_safe_name(sample_id)}.png"
        sheet.save(path, compress_level=PNG_COMPRESS_LEVEL)
        written.append(path)
    return written


def save_comparison_chart(
    path: Path, mean_results: dict[str, Any], methods: Sequence[str], kinds: Sequence[str], title: Optional[str] = None,
    intervals: Optional[dict[str, Any]] = None,
) -> Path:
    """Bar chart of the mean metrics: a panel per metric, w/o vs w/ bars per method (± std when known).

    ``intervals`` (``results.json``'s ``intervals["results"]["mean"]``: method -> kind -> metric ->
    ``{"difference", "low", "high"}``) adds a second row: each kind's difference to w/o with its paired
    bootstrap interval as error bars, around a zero line (a bar crossing zero: the sign is not resolved).
    """
    rows = 2 if intervals else 1
    fig = Figure(figsize=(4.0 * len(METRICS), 3.4 * rows), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, len(METRICS), squeeze=False)
    axes = grid[0]
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
    if intervals:
        for ax, metric in zip(grid[1], METRICS):
            _difference_panel(ax, intervals, methods, [k for k in kinds if k != "backbone"], metric, positions)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def difference_points(intervals: dict[str, Any], methods: Sequence[str], kind: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(differences [M], errors [2, M])`` in points for matplotlib's ``yerr`` (NaN where unknown)."""
    values, below, above = [], [], []
    for method in methods:
        entry = (intervals.get(method, {}).get(kind) or {}).get(metric) or {}
        value, low, high = entry.get("difference"), entry.get("low"), entry.get("high")
        values.append(np.nan if value is None else 100 * value)
        below.append(np.nan if value is None or low is None else 100 * (value - low))
        above.append(np.nan if value is None or high is None else 100 * (high - value))
    return np.array(values), np.array([below, above])


def _difference_panel(ax: Any, intervals: dict[str, Any], methods: Sequence[str], kinds: Sequence[str], metric: str,
                      positions: np.ndarray) -> None:
    ax.axhline(0.0, color="#444444", linewidth=0.8)
    width = 0.8 / max(len(kinds), 1)
    for j, kind in enumerate(kinds):
        values, errors = difference_points(intervals, methods, kind, metric)
        ax.errorbar(positions + (j - (len(kinds) - 1) / 2) * width, values, yerr=errors, fmt="o", capsize=4,
                    color=KIND_COLORS.get(kind), label=f"{KIND_LABELS[kind]} − w/o")
    ax.set_xticks(positions, [DISPLAY_NAMES.get(m, m) for m in methods], rotation=20, fontsize=8)
    ax.set_xlim(-0.5, len(methods) - 0.5)
    ax.set_title(f"{METRIC_LABELS[metric]} minus w/o (points), bootstrap interval", fontsize=9)
    ax.legend(fontsize=8, loc="best")
