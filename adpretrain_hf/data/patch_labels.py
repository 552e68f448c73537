"""Pixel masks -> per-patch anomaly labels on a backbone's token grid.

The losses need one label per patch token. The release uses two rules for this (the angle
loss counts "more than 32 mask pixels", the norm loss resizes the mask with nearest
interpolation); here one rule serves both: a patch is anomalous when the *fraction* of its
pixels that are masked exceeds a threshold, by default :data:`PATCH_ANOMALY_FRACTION` =
32/256 (the release's count over a 16x16-pixel patch), which does not depend on the
image or patch size.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

PATCH_ANOMALY_FRACTION = 32 / 256


def _as_grid(grid: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        grid = (int(grid), int(grid))
    if not isinstance(grid, Sequence) or len(grid) != 2 or not all(
        isinstance(g, (int, np.integer)) and not isinstance(g, bool) for g in grid
    ):
        raise TypeError(f"grid must be (h, w) as two integers (or one int for a square grid), got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1:
        raise ValueError(f"grid sides must be positive, got {(h, w)}")
    return h, w


def _as_masks(masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate masks and return them as ``[B, 1, H, W]`` float32."""
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor or numpy array, got {type(masks).__name__}")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape [B, H, W] or [B, 1, H, W], got {list(masks.shape)}")
    masks = masks.float()
    if masks.numel() and (masks.min() < 0 or masks.max() > 1):
        raise ValueError(
            f"masks must hold values in {{0, 1}}, got range [{masks.min().item():g}, {masks.max().item():g}]: "
            "binarise 0/255 masks with (mask > 0)"
        )
    return masks[:, None]


def patch_fractions(masks: torch.Tensor | np.ndarray, grid: int | Sequence[int]) -> torch.Tensor:
    """The masked fraction of every patch, ``[B, h*w]`` float32 in row-major patch order.

    Computed by adaptive average pooling of the float mask. When ``H`` is divisible by
    ``h`` (and ``W`` by ``w``) this is exactly the mean over each ``H/h x W/w`` block.
    Otherwise patch ``i`` covers rows ``floor(i*H/h)`` to ``ceil((i+1)*H/h) - 1`` (windows
    overlap by at most one row), the same as ``F.interpolate(mode="area")``.
    """
    h, w = _as_grid(grid)
    pooled = F.adaptive_avg_pool2d(_as_masks(masks), (h, w))  # [B, 1, h, w]
    return pooled.flatten(1)


def patch_labels(
    masks: torch.Tensor | np.ndarray, grid: int | Sequence[int], threshold: float = PATCH_ANOMALY_FRACTION
) -> torch.Tensor:
    """Per-patch labels: ``True`` where more than ``threshold`` of the patch is masked.

    Args:
        masks: ``[B, H, W]`` or ``[B, 1, H, W]`` with values in {0, 1} (bool, int or float).
        grid: the token grid ``(h, w)``, e.g. ``model.grid_sizes[layer]``.
        threshold: masked fraction a patch must exceed, in [0, 1).

    Returns:
        ``[B, h*w]`` bool, row-major like the backbone's patch tokens.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be a fraction in [0, 1), got {threshold!r}")
    return patch_fractions(masks, grid) > threshold
