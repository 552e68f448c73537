"""Tiny synthetic data and fitted detectors shared by the trained-detector tests (CFLOW, GLASS, UniAD).

The easy case every method must solve: *normal* images are smooth, low-amplitude noise
textures (a 4x4 Gaussian field, std 0.2, bilinearly upsampled to 32x32); *anomalous*
images are the same kind of texture with a bright (value 2.0), high-contrast 8x8 square
pasted at a random place. A fixed random conv stack turns 32x32 images into two layers on
different grids (8 channels at 8x8, 16 channels at 4x4), like CNN stages.

``FITTED[cls]`` fits a method on first use and keeps it for the session, so each test module
of one method fits only that method; ``PREDICTIONS[cls]`` is its prediction on ``TEST``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adpretrain_hf.detectors.cflow import CFLOW, CFLOWConfig
from adpretrain_hf.detectors.glass import GLASS, GLASSConfig
from adpretrain_hf.detectors.trained import TrainedDetector
from adpretrain_hf.detectors.uniad import UniAD, UniADConfig


class FakeExtractor:
    """Fixed random conv stack: ``[B, 3, 32, 32]`` -> ``[[B, 8, 8, 8], [B, 16, 4, 4]]``."""

    image_size = (32, 32)
    device = torch.device("cpu")

    def __init__(self, kind: str = "backbone", seed: int = 0, channels: tuple[int, int] = (8, 16)) -> None:
        g = torch.Generator().manual_seed(seed)
        self.feature_kind = kind
        self.w1 = torch.randn(channels[0], 3, 4, 4, generator=g) / 4.0
        self.w2 = torch.randn(channels[1], channels[0], 2, 2, generator=g) / 4.0

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = F.leaky_relu(F.conv2d(x, self.w1, stride=4), 0.1)
        return [f1, F.leaky_relu(F.conv2d(f1, self.w2, stride=2), 0.1)]


def textures(n: int, seed: int, defect: bool = False) -> torch.Tensor:
    """Smooth low-amplitude noise ``[n, 3, 32, 32]``; with ``defect`` a bright 8x8 square each."""
    g = torch.Generator().manual_seed(seed)
    imgs = F.interpolate(torch.randn(n, 3, 4, 4, generator=g) * 0.2, size=(32, 32), mode="bilinear", align_corners=False)
    if defect:
        for i in range(n):
            y, x = torch.randint(0, 24, (2,), generator=g).tolist()
            imgs[i, :, y : y + 8, x : x + 8] = 2.0
    return imgs


TRAIN = textures(24, seed=1)


TEST = torch.cat([textures(12, seed=2), textures(12, seed=3, defect=True)])


LABELS = [0] * 12 + [1] * 12

# Tiny but complete configurations (published defaults are the dataclass defaults).
CONFIGS = {
    CFLOW: CFLOWConfig(meta_epochs=3, sub_epochs=2, batch_size=8, coupling_blocks=4, condition_dim=32, lr=1e-3, lr_warm_epochs=0),
    GLASS: GLASSConfig(meta_epochs=5, dsc_hidden=32, embed_dim=None, lr=1e-2, dsc_lr=2e-2),
    UniAD: UniADConfig(epochs=5, hidden_dim=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1,
                       dim_feedforward=64, lr=1e-3, batch_size=4),
}


METHODS = list(CONFIGS)

TRAINED_EXTRACTOR = FakeExtractor()


class _FitOnFirstUse(dict):
    """``{detector class: detector fitted on TRAIN}``, fitted when first asked for."""

    def __missing__(self, cls: type) -> TrainedDetector:
        self[cls] = cls(TRAINED_EXTRACTOR, CONFIGS[cls], progress=False, batch_size=16).fit(TRAIN)
        return self[cls]


class _PredictOnFirstUse(dict):
    """``{detector class: (maps [24, 32, 32], scores [24])}`` of the fitted detector on TEST."""

    def __missing__(self, cls: type) -> tuple[torch.Tensor, torch.Tensor]:
        self[cls] = FITTED[cls].predict(TEST)
        return self[cls]


FITTED = _FitOnFirstUse()
PREDICTIONS = _PredictOnFirstUse()
