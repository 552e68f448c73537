"""Turning per-layer patch scores into pixel anomaly maps.

Every detector in the package (FeatureNorm, PatchCore, PaDiM, ...) ends the same way:
per-layer score grids are upsampled to the image, averaged over layers and smoothed
with a Gaussian of sigma 4 (the value used by PatchCore, PaDiM and the paper). Keeping
that one path here means "w/o vs w/ pretrained features" differ only in the features.

This file is part of the remote-code bundle: it imports only torch.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

GAUSSIAN_SIGMA = 4.0
GAUSSIAN_TRUNCATE = 4.0  # kernel radius = truncate * sigma, as scipy.ndimage.gaussian_filter


def gaussian_kernel1d(sigma: float, truncate: float = GAUSSIAN_TRUNCATE, dtype=torch.float32) -> torch.Tensor:
    """A normalised 1-D Gaussian with scipy's radius rule (``int(truncate * sigma + 0.5)``)."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype)


def _pad_symmetric(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Pad by mirroring *including* the edge sample (scipy's ``mode="reflect"``)."""
    size = x.shape[dim]
    if radius == 0:
        return x
    # Repeat the mirrored signal as often as needed for kernels wider than the map.
    reps = math.ceil(radius / size)
    flipped = x.flip(dim)
    left_parts, right_parts = [], []
    for i in range(reps):
        left_parts.insert(0, flipped if i % 2 == 0 else x)
        right_parts.append(flipped if i % 2 == 0 else x)
    left = torch.cat(left_parts, dim=dim).narrow(dim, reps * size - radius, radius)
    right = torch.cat(right_parts, dim=dim).narrow(dim, 0, radius)
    return torch.cat([left, x, right], dim=dim)


def gaussian_blur2d(maps: torch.Tensor, sigma: float = GAUSSIAN_SIGMA) -> torch.Tensor:
    """Separable Gaussian smoothing of ``maps [N, H, W]``; matches scipy.ndimage.gaussian_filter.

    sigma <= 0 returns the input unchanged.
    """
    if sigma <= 0:
        return maps
    if maps.dim() != 3:
        raise ValueError(f"gaussian_blur2d expects maps of shape [N, H, W], got {tuple(maps.shape)}")
    work_dtype = maps.dtype if maps.dtype in (torch.float32, torch.float64) else torch.float32
    x = maps.to(work_dtype).unsqueeze(1)  # [N, 1, H, W]
    kernel = gaussian_kernel1d(sigma, dtype=work_dtype).to(maps.device)
    radius = kernel.numel() // 2
    x = _pad_symmetric(x, radius, dim=3)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = _pad_symmetric(x, radius, dim=2)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1).to(maps.dtype)


def upsample_and_average(score_grids: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample per-layer score grids ``[N, h_l, w_l]`` to ``size`` and average them.

    Layers may have different grids (CNN stages); the result is ``[N, H, W]`` in float32.
    """
    if len(score_grids) == 0:
        raise ValueError("no score grids to combine: at least one layer is needed")
    for index, grid in enumerate(score_grids):
        if grid.dim() != 3:
            raise ValueError(f"score grid {index} has shape {tuple(grid.shape)}: pass one [N, h, w] grid per layer")
    upsampled = [
        F.interpolate(grid.float().unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        for grid in score_grids
    ]
    return torch.stack(upsampled, dim=0).mean(dim=0)


def anomaly_map_from_grids(
    score_grids: Sequence[torch.Tensor], size: tuple[int, int], sigma: float = GAUSSIAN_SIGMA
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer grids -> (pixel anomaly maps ``[N, H, W]``, image scores ``[N]`` = max of the map)."""
    maps = gaussian_blur2d(upsample_and_average(score_grids, size), sigma)
    return maps, maps.flatten(1).amax(dim=1)


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, h*w, C]`` tokens -> ``[B, C, h, w]`` map (row-major patch order)."""
    if tokens.dim() != 3:
        raise ValueError(f"tokens_to_grid expects tokens of shape [B, h*w, C], got {tuple(tokens.shape)}")
    b, n, c = tokens.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"{n} tokens do not fill a {h}x{w} grid")
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def feature_norm_grids(tokens_per_layer: Sequence[torch.Tensor], grids: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """FeatureNorm: the L2 norm of each token, laid out on its layer's grid ``[B, h, w]``."""
    return [t.float().norm(dim=-1).reshape(t.shape[0], *g) for t, g in zip(tokens_per_layer, grids)]
