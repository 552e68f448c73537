"""Plain helpers shared by the training-free detector tests (the ``ext`` fixture is in conftest.py).

A fixed random conv stack standing in for a backbone, seeded images, and the reference map
pipeline (bilinear upsample, mean over layers, scipy Gaussian, max) written out with scipy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from adpretrain_hf.detectors import PatchCore


class FakeExtractor:
    """A fixed random conv stack: 32x32 images -> layers of 8x8, 8x8 and 4x4 (CNN-like stages)."""

    feature_kind = "backbone"
    image_size = (32, 32)
    device = torch.device("cpu")

    def __init__(self, channels: tuple[int, int, int] = (8, 12, 16), seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        c1, c2, c3 = channels
        self.w1 = torch.randn(c1, 3, 4, 4, generator=g) * 0.3
        self.w2 = torch.randn(c2, c1, 3, 3, generator=g) * 0.3
        self.w3 = torch.randn(c3, c2, 3, 3, generator=g) * 0.3

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = torch.tanh(F.conv2d(x, self.w1, stride=4))  # [B, 8, 8, 8]
        f2 = torch.tanh(F.conv2d(f1, self.w2, padding=1))  # [B, 12, 8, 8]
        f3 = torch.tanh(F.conv2d(f2, self.w3, stride=2, padding=1))  # [B, 16, 4, 4]
        return [f1, f2, f3]


def images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def ref_maps(grids: list[np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer grids [N, h, w] -> bilinear upsample, mean over layers, scipy Gaussian sigma 4, max."""
    up = [F.interpolate(torch.from_numpy(g).double()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].numpy() for g in grids]
    mean = np.mean(up, axis=0)
    maps = np.stack([gaussian_filter(m, sigma=4, mode="reflect", truncate=4.0) for m in mean])
    return maps, maps.reshape(len(maps), -1).max(axis=1)


def fit_patchcore(ext, **kwargs) -> PatchCore:
    options = dict(embedding_dim=32, coreset_ratio=0.25, backend="torch", batch_size=4, progress=False)
    options.update(kwargs)
    return PatchCore(ext, **options).fit(images(6, seed=3))
