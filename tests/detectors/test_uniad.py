"""UniAD: the neighbour mask against loops, masked attention, the map as reconstruction error of
the aligned features, and the unified fit on several categories."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adpretrain_hf.detectors.uniad import (
    EncoderLayer,
    UniAD,
    UniADConfig,
    align_features,
    neighbor_mask,
    scaled_neighbor_size,
)
from tests.detectors.trained_helpers import TEST, TRAIN



def test_neighbor_mask_matches_loops():
    h, w, (kh, kw) = 5, 6, (3, 5)
    expected = torch.zeros(h * w, h * w, dtype=torch.bool)
    for i1 in range(h):
        for j1 in range(w):
            for i2 in range(max(i1 - kh // 2, 0), min(i1 + kh // 2 + 1, h)):
                for j2 in range(max(j1 - kw // 2, 0), min(j1 + kw // 2 + 1, w)):
                    expected[i1 * w + j1, i2 * w + j2] = True
    assert torch.equal(neighbor_mask((h, w), (kh, kw)), expected)
    assert (scaled_neighbor_size((14, 14)), scaled_neighbor_size((16, 16)), scaled_neighbor_size((8, 4))) == ((7, 7), (9, 9), (5, 3))
    with pytest.raises(ValueError, match="neighbor_size"):
        neighbor_mask((3, 3), (5, 5))


def test_masked_attention_ignores_the_neighbourhood():
    """An encoder token's output changes with a far token, not with a masked neighbour (other than itself)."""
    torch.manual_seed(0)
    layer = EncoderLayer(UniADConfig(hidden_dim=8, num_heads=2, dim_feedforward=16, dropout=0.0)).eval()
    mask, pos = neighbor_mask((5, 5), (3, 3)), torch.zeros(25, 8)
    x = torch.randn(1, 25, 8)
    base = layer(x, pos, mask)[0, 12]  # centre token (2, 2)
    near, far = x.clone(), x.clone()
    near[0, 13] += 5.0  # (2, 3): inside the 3x3 window
    far[0, 0] += 5.0  # (0, 0): outside
    torch.testing.assert_close(layer(near, pos, mask)[0, 12], base)
    assert not torch.allclose(layer(far, pos, mask)[0, 12], base)


def test_uniad_map_is_error_on_concatenated_original_features(fitted, trained_ext):
    det, feats = fitted[UniAD], trained_ext(TEST[:3])
    assert det.grid == (4, 4)  # the coarsest layer
    x = torch.cat([F.interpolate(feats[0], size=(4, 4), mode="bilinear", align_corners=True), feats[1]], dim=1)
    torch.testing.assert_close(align_features(feats, (4, 4)), x)
    with torch.no_grad():
        rec = det.model(x)
    assert rec.shape == (3, 24, 4, 4)
    torch.testing.assert_close(det.module.score_grids(feats)[0][0], ((rec - x) ** 2).sum(dim=1).sqrt())
    maps, scores = det.predict(TEST[:3])
    torch.testing.assert_close(scores, F.avg_pool2d(maps[:, None], 2, stride=1).flatten(1).amax(dim=1))  # 16 px at 224 -> 2 at 32


def test_uniad_unified_fit_on_a_mix_of_categories(trained_ext):
    cfg = UniADConfig(epochs=1, hidden_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=16)
    mix = {"textures": TRAIN[:6], "brighter": TRAIN[6:12] * 1.5}
    det = UniAD(trained_ext, cfg, progress=False).fit(mix)
    assert det.predict(TEST[:2])[0].shape == (2, 32, 32)
    with pytest.raises(ValueError, match="one instance per category"):
        UniAD(trained_ext, UniADConfig(epochs=1, unified=False), progress=False).fit(mix)
