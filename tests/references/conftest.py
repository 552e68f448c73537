"""Fixtures of the reference-selection tests: a synthetic pool where alignment alone separates
images, a random-init ResNet-18, and the matcher fitted on the pool (once per session: no test
changes them)."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from adpretrain_hf.references import SemanticAlignedMatcher

IMAGE_SIDE = 64  # ResNet-18 stem + layer1 -> 16 x 16 maps; the 5 x 5 grid splits 16 unevenly
POSITIONS = ((16, 16), (16, 48), (48, 16), (48, 48))  # bar centres (row, col)
ORIENTATIONS = ("horizontal", "vertical")
CONFIGS = [(p, o) for p in range(len(POSITIONS)) for o in range(len(ORIENTATIONS))]  # 8 configurations


def synthetic_images(draws_per_config: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright 21 x 7 bar (one of 4 positions x 2 orientations) on a fresh textured background.

    Each draw has a new background texture (smoothed + white noise) and a +-2 px jitter of the
    bar, so two images of one configuration share only the bar's position and orientation.
    Returns images ``[8 * draws, 3, 64, 64]`` and configuration labels ``[8 * draws]``.
    """
    rows, cols = torch.meshgrid(torch.arange(IMAGE_SIDE).float(), torch.arange(IMAGE_SIDE).float(), indexing="ij")
    images, labels = [], []
    for label, (position, orientation) in enumerate(CONFIGS):
        for _ in range(draws_per_config):
            noise = torch.randn(1, 1, IMAGE_SIDE, IMAGE_SIDE, generator=generator)
            background = 2 * torch.nn.functional.avg_pool2d(noise, 5, 1, 2)[0, 0]
            background = background + 0.3 * torch.randn(IMAGE_SIDE, IMAGE_SIDE, generator=generator)
            jitter = torch.randint(-2, 3, (2,), generator=generator)
            row, col = POSITIONS[position][0] + jitter[0], POSITIONS[position][1] + jitter[1]
            half_h, half_w = (3, 10) if ORIENTATIONS[orientation] == "horizontal" else (10, 3)
            bar = ((rows - row).abs() <= half_h) & ((cols - col).abs() <= half_w)
            images.append((background + 4.0 * bar).expand(3, -1, -1))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


@pytest.fixture(scope="session")
def synthetic():
    generator = torch.Generator().manual_seed(0)
    pool, pool_labels = synthetic_images(5, generator)  # 40 pool images, 5 per configuration
    queries, query_labels = synthetic_images(2, generator)  # 16 queries: new draws of each configuration
    return pool, pool_labels, queries, query_labels


@pytest.fixture(scope="session")
def resnet() -> torch.nn.Module:
    """A random-init ResNet-18 (no weights offline); matchers share its stem, nobody changes it."""
    torch.manual_seed(0)
    return resnet18(weights=None)


@pytest.fixture(scope="session")
def fitted(synthetic, resnet):
    pool = synthetic[0]
    return SemanticAlignedMatcher(resnet, device="cpu", kmeans_backend="sklearn").fit(pool)
