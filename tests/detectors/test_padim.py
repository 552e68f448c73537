"""PaDiM against numpy and scipy: per-position means and covariances, Mahalanobis distances,
the statistics' memory formula, and the channel subset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis

from adpretrain_hf.detectors import PaDiM
from adpretrain_hf.detectors.padim import PADIM_COV_EPS, padim_statistics_bytes
from tests.detectors.helpers import images, ref_maps


def loop_padim_embedding(feats: list[np.ndarray]) -> np.ndarray:
    """Concatenate layers after nearest upsampling to the largest grid (src index = floor(i * h / H))."""
    big_h, big_w = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])
    parts = []
    for f in feats:
        h, w = f.shape[-2:]
        up = np.zeros(f.shape[:2] + (big_h, big_w))
        for i in range(big_h):
            for j in range(big_w):
                up[:, :, i, j] = f[:, :, (i * h) // big_h, (j * w) // big_w]
        parts.append(up)
    return np.concatenate(parts, axis=1)


@pytest.fixture(scope="module")
def padim_fit(ext):
    train = images(10, seed=7)
    det = PaDiM(ext, mode="concatenated", batch_size=4, progress=False).fit(train)  # 3 batches: streaming sums
    emb = loop_padim_embedding([f.double().numpy() for f in ext(train)])  # [10, 36, 8, 8]
    return det, emb


def test_padim_mean_and_covariance_vs_numpy(padim_fit):
    det, emb = padim_fit
    assert det.grids == [(8, 8)] and det.means[0].shape == (64, 36)
    cov = det.covariances()[0].double().numpy()
    flat = emb.reshape(10, 36, 64)
    for p in range(64):
        np.testing.assert_allclose(det.means[0][p].numpy(), flat[:, :, p].mean(axis=0), atol=1e-5)
        expected = np.cov(flat[:, :, p], rowvar=False) + PADIM_COV_EPS * np.eye(36)
        np.testing.assert_allclose(cov[p], expected, atol=1e-4)


def test_padim_mahalanobis_vs_scipy(ext, padim_fit):
    det, emb = padim_fit
    x = images(2, seed=8)
    maps, scores = det.predict(x)
    flat = emb.reshape(10, 36, 64)
    test = loop_padim_embedding([f.double().numpy() for f in ext(x)]).reshape(2, 36, 64)
    grid = np.zeros((2, 64))
    for p in range(64):
        inv = np.linalg.inv(np.cov(flat[:, :, p], rowvar=False) + PADIM_COV_EPS * np.eye(36))
        mu = flat[:, :, p].mean(axis=0)
        for n in range(2):
            grid[n, p] = mahalanobis(test[n, :, p], mu, inv)
    ref, ref_scores = ref_maps([grid.reshape(2, 8, 8)], (32, 32))
    np.testing.assert_allclose(maps.numpy(), ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-3, atol=1e-3)


def numpy_mahalanobis_grid(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """float64 per-position Gaussian of ``train [N, C, h, w]``, distances of ``test [B, C, h, w]`` -> ``[B, h, w]``."""
    n, c, h, w = train.shape
    out = np.zeros((test.shape[0], h, w))
    for i in range(h):
        for j in range(w):
            x = train[:, :, i, j]
            mu = x.mean(axis=0)
            cov = (x - mu).T @ (x - mu) / (n - 1) + PADIM_COV_EPS * np.eye(c)
            inv = np.linalg.inv(cov)
            for b in range(test.shape[0]):
                d = test[b, :, i, j] - mu
                out[b, i, j] = math.sqrt(d @ inv @ d)
    return out


def test_padim_per_layer_is_default_and_matches_numpy(ext):
    train, x = images(10, seed=7), images(2, seed=8)
    det = PaDiM(ext, batch_size=4, progress=False).fit(train)
    assert det.mode == "per_layer" and det.grids == [(8, 8), (8, 8), (4, 4)]
    assert [tuple(m.shape) for m in det.means] == [(64, 8), (64, 12), (16, 16)]
    maps, scores = det.predict(x)
    tr = [f.double().numpy() for f in ext(train)]
    te = [f.double().numpy() for f in ext(x)]
    grids = [numpy_mahalanobis_grid(a, b) for a, b in zip(tr, te)]  # one Gaussian per layer, on its own grid
    ref, ref_scores = ref_maps(grids, (32, 32))  # each grid upsampled to the image, then averaged
    np.testing.assert_allclose(maps.numpy(), ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-3, atol=1e-3)
    cov2 = det.covariances()[2].double().numpy()[5]  # layer 2, position (1, 1)
    x2 = tr[2][:, :, 1, 1]
    np.testing.assert_allclose(cov2, np.cov(x2, rowvar=False) + PADIM_COV_EPS * np.eye(16), atol=1e-4)


def test_padim_statistics_memory_formula(ext):
    train = images(4, seed=7)
    shapes = [(8, 8, 8), (12, 8, 8), (16, 4, 4)]
    for mode, expected_values in (("per_layer", 64 * (64 + 8) + 64 * (144 + 12) + 16 * (256 + 16)),
                                  ("concatenated", 64 * (36 * 36 + 36))):
        det = PaDiM(ext, mode=mode, progress=False).fit(train)
        assert det.statistics_bytes() == padim_statistics_bytes(shapes, mode) == 4 * expected_values
    clip_large = [(1024, 16, 16)] * 4
    assert padim_statistics_bytes(clip_large, "concatenated") > 4 * padim_statistics_bytes(clip_large, "per_layer") * 0.99
    with pytest.raises(ValueError, match="mode"):
        PaDiM(ext, mode="joint")


def test_padim_channel_subset_and_layer_positions(ext):
    train = images(6, seed=9)
    det = PaDiM(ext, mode="concatenated", num_features=10, layer_positions=[1, 2], seed=1, progress=False).fit(train)
    idx = det.channel_index[0].tolist()
    assert len(idx) == 10 and idx == sorted(set(idx)) and max(idx) < 12 + 16
    full = loop_padim_embedding([f.double().numpy() for f in ext(train)[1:]])
    np.testing.assert_allclose(det.means[0].numpy(), full[:, idx].reshape(6, 10, 64).mean(axis=0).T, atol=1e-5)
    per_layer = PaDiM(ext, num_features=10, layer_positions=[0, 2], seed=1, progress=False).fit(train)
    assert per_layer.channel_index[0] is None and len(per_layer.channel_index[1]) == 10  # 8 channels: all kept
    sub = per_layer.channel_index[1].tolist()
    last = ext(train)[2].double().numpy()[:, sub].reshape(6, 10, 16)
    np.testing.assert_allclose(per_layer.means[1].numpy(), last.mean(axis=0).T, atol=1e-5)
    auto = PaDiM(ext, mode="concatenated", num_features="auto")
    assert auto._choose_channels(448, torch.device("cpu")).numel() == 100  # the original's ResNet-18 size
    assert auto._choose_channels(1792, torch.device("cpu")).numel() == 550  # and WideResNet-50's
    assert auto._choose_channels(36, torch.device("cpu")) is None  # narrower than 550: keep all
