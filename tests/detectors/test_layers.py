"""Which layers each detector uses (``detectors/layers.py``): the published defaults, and
``layer_positions=`` overriding them.

The expected defaults are written out here from the papers / the release (not read from
the classes), so a changed default fails this test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adpretrain_hf.detectors import DEFAULT_LAST_POSITIONS, DETECTORS, FeatureMapDetector, FeatureNorm, build_detector
from tests.detectors.helpers import ref_maps

CHANNELS = (4, 5, 6, 7, 8)  # one width per layer, so a map's width names its layer
PUBLISHED = {  # registry name -> the layers (0..4) the method uses by default
    "featurenorm": [0, 1, 2, 3, 4],
    "patchcore": [2, 3, 4],
    "padim": [0, 1, 2, 3, 4],
    "cflow": [2, 3, 4],
    "glass": [3, 4],
    "uniad": [0, 1, 2, 3, 4],
}


class FiveLayerExtractor:
    """``[B, 3, 32, 32]`` -> five ``[B, C_l, 4, 4]`` maps (C_l = 4..8) from fixed random convs."""

    feature_kind = "backbone"
    image_size = (32, 32)
    device = torch.device("cpu")

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.weights = [torch.randn(c, 3, 8, 8, generator=g) * 0.1 for c in CHANNELS]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tanh(F.conv2d(x, w, stride=8)) for w in self.weights]


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def seen_layers(det, x: torch.Tensor) -> list[int]:
    """The layers (by width) a detector's scoring receives for images ``x``."""
    if isinstance(det, FeatureMapDetector):
        maps = det._select(det.extractor(x), fitting=True, check_grid=False)
    else:  # trained detectors read their (layer-selecting) extractor
        maps = det.extractor(x)
    return [CHANNELS.index(int(m.shape[1])) for m in maps]


def make(name: str, **kwargs):
    extra = {"quick": True} if name in ("cflow", "glass", "uniad") else {}
    return build_detector(name, FiveLayerExtractor(), progress=False, **extra, **kwargs)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_default_layers(name):
    if name not in DETECTORS:
        pytest.skip(f"{name} is not available here")
    assert seen_layers(make(name), images(2, 0)) == PUBLISHED[name]
    count = DEFAULT_LAST_POSITIONS[name]
    assert (list(range(5)) if count is None else list(range(5 - count, 5))) == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_layer_positions_argument_overrides_the_default(name):
    if name not in DETECTORS:
        pytest.skip(f"{name} is not available here")
    assert seen_layers(make(name, layer_positions=[0, -1]), images(2, 0)) == [0, 4]
    with pytest.raises(ValueError, match="non-empty"):
        make(name, layer_positions=[])


@pytest.mark.parametrize("name", ["cflow", "glass"])
def test_trained_detectors_fit_on_their_default_layers(name):
    if name not in DETECTORS:
        pytest.skip(f"{name} is not available here")
    det = make(name, epochs=1, batch_size=4).fit(images(4, 1))
    assert [c for c, _, _ in det.layer_shapes] == [CHANNELS[i] for i in PUBLISHED[name]]
    maps, scores = det.predict(images(2, 2))
    assert maps.shape == (2, 32, 32) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="out of range"):
        make(name, layer_positions=[7]).fit(images(4, 1))


def test_shared_layer_choice_rechecks_the_count():
    from adpretrain_hf.detectors.layers import LayerSelectingExtractor

    selecting = LayerSelectingExtractor(lambda x: [x, x, x], layer_positions=[2])
    x = torch.zeros(1, 3, 4, 4)
    assert len(selecting(x)) == 1 and selecting.resolved_positions == [2]
    selecting.inner = lambda x: [x, x]
    with pytest.raises(ValueError, match="now returns 2 layers"):
        selecting(x)
