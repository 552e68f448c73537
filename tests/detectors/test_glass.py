"""GLASS: the ring projection, defaults by feature kind, the patch embedding against an explicit
computation, the image score, and the image-synthesis branch."""

from __future__ import annotations

import math

import pytest
import torch

from adpretrain_hf.modeling.detector_module_adpretrain import build_detector_module
import torch.nn.functional as F

from adpretrain_hf.detectors.glass import GLASS, GLASSConfig, embed_features, project_to_ring
from tests.detectors.trained_helpers import TEST, TRAIN, FakeExtractor



def test_ring_projection():
    torch.manual_seed(0)
    anchor, pts = torch.randn(50, 6), torch.randn(50, 6) * torch.rand(50, 1) * 6
    out = project_to_ring(pts, anchor, 1.0, 2.0)
    d_in, d_out = (pts - anchor).norm(dim=1), (out - anchor).norm(dim=1)
    assert ((d_out > 1.0 - 1e-5) & (d_out < 2.0 + 1e-5)).all()
    torch.testing.assert_close(F.cosine_similarity(out - anchor, pts - anchor), torch.ones(50))
    inside = (d_in >= 1.0) & (d_in <= 2.0)
    torch.testing.assert_close(out[inside], pts[inside])


def test_glass_defaults_by_feature_kind():
    pre, back = GLASS(FakeExtractor(kind="pretrained")), GLASS(FakeExtractor(kind="backbone"))
    assert (pre.config.adaptor, pre.config.noise_std) == ("identity", 0.005)
    assert (back.config.adaptor, back.config.noise_std) == ("linear", 0.015)
    assert GLASS(FakeExtractor(kind="pretrained"), GLASSConfig(adaptor="linear", noise_std=0.1)).config.noise_std == 0.1
    with pytest.raises(ValueError, match="extractor.feature_kind"):
        GLASS(FakeExtractor(kind="other"))


def test_glass_embedding_against_explicit_computation(trained_ext):
    feats = trained_ext(TEST[:2])
    up = F.interpolate(feats[1], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(embed_features(feats, 1, None), torch.cat([feats[0], up], dim=1))
    local = embed_features(feats, 3, None)  # interior position: the plain 3x3 mean
    torch.testing.assert_close(local[:, :8, 4, 5], feats[0][:, :, 3:6, 4:7].mean(dim=(2, 3)))
    assert embed_features(feats, 3, 12).shape == (2, 12, 8, 8)


def test_glass_image_score_is_max_of_raw_patch_scores(fitted, predictions, trained_ext):
    raw = fitted[GLASS].module.score_grids(trained_ext(TEST))[0][0]
    assert raw.shape == (24, 8, 8)  # the first (finest) layer's grid
    torch.testing.assert_close(predictions[GLASS][1], raw.flatten(1).amax(dim=1))


def test_glass_image_synthesis_branch(trained_ext, tmp_path):
    def paste_square(images):
        masks = torch.zeros(images.shape[0], 32, 32)
        masks[:, 8:16, 8:16] = 1
        return images + 2.0 * masks[:, None], masks

    cfg = GLASSConfig(meta_epochs=2, dsc_hidden=16, embed_dim=None, image_synthesis=True, ascent_steps=5)
    det = GLASS(trained_ext, cfg, synthesizer=paste_square, progress=False).fit(TRAIN[:8])
    assert all(math.isfinite(x) for x in det.history.step_losses) and det.predict(TEST[:2])[0].shape == (2, 32, 32)
    rebuilt = build_detector_module("glass", det.module.settings())  # scores without the synthesizer
    rebuilt.load_state_dict(det.module.state_dict())
    features = det._used_features(det.extractor(TEST[:2]))
    assert torch.equal(rebuilt(features, (32, 32))[1], det.predict(TEST[:2])[1])
    with pytest.raises(ValueError, match="synthesizer"):
        GLASS(trained_ext, cfg, progress=False).fit(TRAIN[:8])
