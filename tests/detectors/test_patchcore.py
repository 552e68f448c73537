"""PatchCore against brute-force computations on small inputs: its patch aggregation against
explicit loops, its memory bank and nearest-neighbour scores against scipy's cdist, and the
reweighted image score (Eq. 7) against the formula.

The only torch reference is bilinear upsampling of score grids to the image, whose equality with
an explicit formula is itself checked in the aggregation test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from adpretrain_hf.detectors import PatchCore
from adpretrain_hf.detectors.coreset import greedy_coreset_indices
from adpretrain_hf.modeling.scoring_adpretrain import aggregate_patch_features
from adpretrain_hf.modeling.matching_adpretrain import faiss_available
from tests.detectors.helpers import FakeExtractor, fit_patchcore, images, ref_maps


# -- brute-force references ----------------------------------------------------------------


def loop_local_average(a: np.ndarray) -> np.ndarray:
    """[C, h, w] -> 3x3 neighbourhood mean with zero padding counted (divide by 9)."""
    c, h, w = a.shape
    out = np.zeros_like(a)
    for i in range(h):
        for j in range(w):
            acc = np.zeros(c)
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if 0 <= i + di < h and 0 <= j + dj < w:
                        acc += a[:, i + di, j + dj]
            out[:, i, j] = acc / 9.0
    return out


def loop_bilinear(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[C, h, w] -> [C, H, W], bilinear with half-pixel centres (align_corners=False)."""
    c, h, w = a.shape
    big_h, big_w = size
    out = np.zeros((c, big_h, big_w))
    for i in range(big_h):
        y = max((i + 0.5) * h / big_h - 0.5, 0.0)
        y0 = int(math.floor(y)); y1 = min(y0 + 1, h - 1); wy = y - y0  # noqa: E702
        for j in range(big_w):
            x = max((j + 0.5) * w / big_w - 0.5, 0.0)
            x0 = int(math.floor(x)); x1 = min(x0 + 1, w - 1); wx = x - x0  # noqa: E702
            out[:, i, j] = ((1 - wy) * (1 - wx) * a[:, y0, x0] + (1 - wy) * wx * a[:, y0, x1]
                            + wy * (1 - wx) * a[:, y1, x0] + wy * wx * a[:, y1, x1])
    return out


def loop_adaptive_pool(v: np.ndarray, out: int) -> np.ndarray:
    """1-D adaptive average pooling: bin i averages v[floor(i n/out) : ceil((i+1) n/out)]."""
    n = len(v)
    return np.array([v[(i * n) // out : -((-(i + 1) * n) // out)].mean() for i in range(out)])


def loop_local_context(maps: list[np.ndarray]) -> list[np.ndarray]:
    """Per-layer [B, C_l, h_l, w_l] -> 3x3 averaged, bilinearly resized to the largest grid [B, C_l, h, w]."""
    grid = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
    out = []
    for m in maps:
        avg = [loop_local_average(x) for x in m]
        out.append(np.stack([loop_bilinear(a, grid) if m.shape[-2:] != grid else a for a in avg]))
    return out


def loop_patchcore_embedding(maps: list[np.ndarray], dim: int) -> np.ndarray:
    """Per-layer [B, C_l, h_l, w_l] -> [B, h, w, D] by explicit loops: pool each layer to
    min(dim, C_l) (never up), concatenate, pool to min(dim, total)."""
    layers = loop_local_context(maps)
    b, _, h, w = layers[0].shape
    total = sum(min(dim, m.shape[1]) for m in maps)
    width = min(dim, total)
    out = np.zeros((b, h, w, width))
    for n in range(b):
        for i in range(h):
            for j in range(w):
                pooled = [loop_adaptive_pool(layer[n, :, i, j], min(dim, layer.shape[1])) for layer in layers]
                out[n, i, j] = loop_adaptive_pool(np.concatenate(pooled), width)
    return out


@pytest.mark.parametrize("layer_ids", [[0, 1, 2], [2, 0], [2]])
def test_patchcore_aggregation_matches_loops(ext, layer_ids):
    feats = ext(images(2, seed=2))
    used = [feats[i] for i in layer_ids]
    for dim in (10, 5, 1024):  # narrowing some layers (8 stays 8), all layers, none
        ref = loop_patchcore_embedding([f.double().numpy() for f in used], dim=dim)
        got = aggregate_patch_features(used, dim=dim)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_patchcore_bank_and_scores_vs_bruteforce(ext):
    det = fit_patchcore(ext)
    train = aggregate_patch_features(ext(images(6, seed=3)), 32).reshape(-1, 32)
    assert det.memory_bank.shape == (int(train.shape[0] * 0.25), 32)
    keep = greedy_coreset_indices(train, 0.25, det.projection_dim, seed=0)
    np.testing.assert_allclose(det.memory_bank.numpy(), train[keep].numpy(), atol=1e-6)

    x = images(3, seed=4)
    det.image_score = "max"
    maps, scores = det.predict(x)
    emb = aggregate_patch_features(ext(x), 32).double().numpy().reshape(3 * 64, 32)
    grid = cdist(emb, det.memory_bank.double().numpy()).min(axis=1).reshape(3, 8, 8)
    ref, ref_map_max = ref_maps([grid], (32, 32))
    np.testing.assert_allclose(maps.numpy(), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores.numpy(), grid.reshape(3, -1).max(axis=1), rtol=1e-4, atol=1e-4)  # raw, unsmoothed
    det.image_score = "map_max"
    np.testing.assert_allclose(det.predict(x)[1].numpy(), ref_map_max, rtol=1e-4, atol=1e-4)


def test_patchcore_keeps_narrow_backbones_unwidened():
    ext176 = FakeExtractor(channels=(24, 40, 112))  # EfficientNet-Lite0's widths: 176 channels in all
    train, x = images(4, seed=20), images(2, seed=21)
    det = PatchCore(ext176, coreset_ratio=1.0, backend="torch", image_score="max", progress=False).fit(train)
    assert det.memory_bank.shape == (4 * 64, 176)  # default embedding_dim 1024 does not widen 176
    bank = np.concatenate(loop_local_context([f.double().numpy() for f in ext176(train)]), axis=1)  # plain concat
    bank = bank.transpose(0, 2, 3, 1).reshape(-1, 176)
    np.testing.assert_allclose(det.memory_bank.numpy(), bank, rtol=1e-5, atol=1e-6)
    test = np.concatenate(loop_local_context([f.double().numpy() for f in ext176(x)]), axis=1)
    test = test.transpose(0, 2, 3, 1).reshape(-1, 176)
    nn = np.array([min(np.sqrt(((q - r) ** 2).sum()) for r in bank) for q in test]).reshape(2, 8, 8)  # brute force
    maps, scores = det.predict(x)
    ref, _ = ref_maps([nn], (32, 32))
    np.testing.assert_allclose(maps.numpy(), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores.numpy(), nn.reshape(2, -1).max(axis=1), rtol=1e-4, atol=1e-4)
    narrow = PatchCore(ext176, embedding_dim=100, coreset_ratio=1.0, progress=False).fit(train[:1])
    assert narrow.memory_bank.shape[1] == 100  # 24 + 40 + 100 = 164 -> 100
    with pytest.raises(ValueError, match="embedding_dim"):
        PatchCore(ext176, embedding_dim=0)
    with pytest.raises(ValueError, match="image_score"):
        PatchCore(ext176, image_score="mean")


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_patchcore_faiss_and_chunked_torch_agree(ext):
    x = images(3, seed=5)
    maps_f, scores_f = fit_patchcore(ext, backend="faiss").predict(x)
    maps_t, scores_t = fit_patchcore(ext, backend="torch", max_block_elements=50).predict(x)
    np.testing.assert_allclose(maps_f.numpy(), maps_t.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores_f.numpy(), scores_t.numpy(), rtol=1e-4, atol=1e-4)


def test_patchcore_reweighting_matches_formula(ext):
    b = 4
    det = fit_patchcore(ext, num_neighbors=b, coreset_ratio=0.5)  # the default image score is Eq. 7
    assert det.image_score == "reweighted"
    x = images(3, seed=6)
    maps, scores = det.predict(x)
    plain_maps, _ = fit_patchcore(ext, coreset_ratio=0.5, image_score="map_max").predict(x)
    np.testing.assert_allclose(maps.numpy(), plain_maps.numpy(), atol=1e-6)  # only the image score changes

    bank = det.memory_bank.double().numpy()
    emb = aggregate_patch_features(ext(x), 32).double().numpy().reshape(3, 64, 32)
    for n in range(3):
        d = cdist(emb[n], bank)  # [64, M]
        p = int(d.min(axis=1).argmax())  # the test patch with the largest NN distance
        m_star = int(d[p].argmin())
        s_star = d[p, m_star]
        support = np.argsort(cdist(bank[m_star : m_star + 1], bank)[0])[:b]  # N_b(m*), m* included
        expected = (1 - math.exp(s_star) / sum(math.exp(np.linalg.norm(emb[n, p] - bank[m])) for m in support)) * s_star
        assert scores[n].item() == pytest.approx(expected, rel=1e-4)
