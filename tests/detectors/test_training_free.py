"""FeatureNorm, PatchCore, PaDiM and the coreset against brute-force computations on small inputs.

Every reference below is written out here (explicit loops, numpy, scipy); the only torch
reference is bilinear upsampling of score grids to the image, whose equality with an
explicit formula is itself checked in the PatchCore aggregation test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist, mahalanobis

from adpretrain_hf.detectors import DETECTORS, FeatureNorm, PaDiM, PatchCore, build_detector
from adpretrain_hf.detectors.coreset import greedy_coreset_indices, greedy_k_center, random_projection_matrix
from adpretrain_hf.detectors.padim import PADIM_COV_EPS, padim_statistics_bytes
from adpretrain_hf.detectors.patchcore import aggregate_patch_features
from adpretrain_hf.modeling.matching_adpretrain import faiss_available


class FakeExtractor:
    """A fixed random conv stack: 32x32 images -> layers of 8x8, 8x8 and 4x4 (CNN-like stages)."""

    kind = "backbone"
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


@pytest.fixture(scope="module")
def ext() -> FakeExtractor:
    return FakeExtractor()


# -- brute-force references ----------------------------------------------------------------
def ref_maps(grids: list[np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer grids [N, h, w] -> bilinear upsample, mean over layers, scipy Gaussian sigma 4, max."""
    up = [F.interpolate(torch.from_numpy(g).double()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].numpy() for g in grids]
    mean = np.mean(up, axis=0)
    maps = np.stack([gaussian_filter(m, sigma=4, mode="reflect", truncate=4.0) for m in mean])
    return maps, maps.reshape(len(maps), -1).max(axis=1)


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


def naive_greedy(x: np.ndarray, k: int, start: int) -> list[int]:
    """Textbook greedy k-center: repeatedly add the point farthest from the chosen set."""
    chosen = [start]
    while len(chosen) < k:
        d = ((x[:, None, :] - x[None, chosen, :]) ** 2).sum(axis=2).min(axis=1)  # [N] distance to the chosen set
        d[chosen] = -np.inf
        chosen.append(int(np.argmax(d)))
    return chosen


# -- FeatureNorm ---------------------------------------------------------------------------------
def test_featurenorm_matches_explicit_pipeline(ext):
    x = images(3, seed=1)
    det = FeatureNorm(ext, progress=False)
    assert det.fit(None) is det  # nothing to learn; predict also works without fit
    maps, scores = det.predict(x)
    feats = [f.double().numpy() for f in ext(x)]
    grids = []
    for f in feats:
        b, c, h, w = f.shape
        g = np.zeros((b, h, w))
        for n in range(b):
            for i in range(h):
                for j in range(w):
                    g[n, i, j] = math.sqrt(sum(f[n, k, i, j] ** 2 for k in range(c)))
        grids.append(g)
    ref, ref_scores = ref_maps(grids, (32, 32))
    assert maps.shape == (3, 32, 32) and scores.shape == (3,)
    np.testing.assert_allclose(maps.numpy(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-5, atol=1e-5)


# -- PatchCore -----------------------------------------------------------------------------------
@pytest.mark.parametrize("layer_ids", [[0, 1, 2], [2, 0], [2]])
def test_patchcore_aggregation_matches_loops(ext, layer_ids):
    feats = ext(images(2, seed=2))
    used = [feats[i] for i in layer_ids]
    for dim in (10, 5, 1024):  # narrowing some layers (8 stays 8), all layers, none
        ref = loop_patchcore_embedding([f.double().numpy() for f in used], dim=dim)
        got = aggregate_patch_features(used, dim=dim)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_greedy_k_center_matches_naive():
    x = np.random.default_rng(0).normal(size=(120, 6))
    for start in (0, 77):
        got = greedy_k_center(torch.from_numpy(x), 15, start)
        assert got.tolist() == naive_greedy(x, 15, start)


def test_greedy_k_center_with_duplicates_never_repeats():
    # integer coordinates: the norm expansion is exact, so ties break like numpy's (first index)
    distinct = np.random.default_rng(2).integers(-5, 6, size=(5, 3)).astype(np.float64)
    x = np.repeat(distinct, 4, axis=0)  # 20 rows, 5 distinct
    got = greedy_k_center(torch.from_numpy(x), 8, 0).tolist()
    assert got == naive_greedy(x, 8, 0) and len(set(got)) == 8
    assert len({tuple(x[i]) for i in got[:5]}) == 5  # all distinct points before any duplicate


def test_coreset_projection_and_selection():
    feats = np.random.default_rng(1).normal(size=(300, 40))
    got = greedy_coreset_indices(torch.from_numpy(feats), ratio=0.1, projection_dim=8, seed=3, start_index=5)
    proj = feats @ random_projection_matrix(40, 8, seed=3, dtype=torch.float64).numpy()
    assert got.tolist() == naive_greedy(proj, 30, 5)
    again = greedy_coreset_indices(torch.from_numpy(feats), ratio=0.1, projection_dim=8, seed=3)
    assert again.tolist() == greedy_coreset_indices(torch.from_numpy(feats), ratio=0.1, projection_dim=8, seed=3).tolist()
    assert len(set(again.tolist())) == 30
    assert greedy_coreset_indices(torch.from_numpy(feats), ratio=1.0).tolist() == list(range(300))


def fit_patchcore(ext, **kwargs) -> PatchCore:
    options = dict(embedding_dim=32, coreset_ratio=0.25, backend="torch", batch_size=4, progress=False)
    options.update(kwargs)
    return PatchCore(ext, **options).fit(images(6, seed=3))


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


# -- PaDiM ------------------------------------------------------------------------------------------
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


# -- inputs ----------------------------------------------------------------------------------------
def test_iterables_and_dicts_equal_tensor_input(ext):
    train, test = images(6, seed=10), images(2, seed=11)
    a = PaDiM(ext, progress=False).fit(train).predict(test)
    batches = [{"pixel_values": train[:4]}, {"pixel_values": train[4:]}]
    b = PaDiM(ext, progress=False).fit(iter(batches)).predict([test[:1], test[1:]])
    for u, v in zip(a, b):
        np.testing.assert_allclose(u.numpy(), v.numpy(), rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise_clear_errors(ext):
    x = images(4, seed=12)
    for cls in (PatchCore, PaDiM):
        with pytest.raises(RuntimeError, match="not fitted"):
            cls(ext, progress=False).predict(x)
        with pytest.raises(ValueError, match="no images"):
            cls(ext, progress=False).fit(torch.empty(0, 3, 32, 32))
        with pytest.raises(ValueError, match="no images"):
            cls(ext, progress=False).fit([])
        with pytest.raises(ValueError, match="3 channels|RGB"):
            cls(ext, progress=False).fit(torch.zeros(2, 1, 32, 32))
        with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
            cls(ext, progress=False).fit(torch.zeros(3, 32, 32))
        with pytest.raises(ValueError, match="out of range"):
            cls(ext, layer_positions=[5], progress=False).fit(x)
    with pytest.raises(ValueError, match="at least 2"):
        PaDiM(ext, progress=False).fit(x[:1])
    padim = PaDiM(ext, progress=False).fit(x)
    with pytest.raises(ValueError, match="fitted on"):
        padim.predict(images(1, seed=13, size=64))  # 16x16 grid vs the fitted 8x8
    patchcore = fit_patchcore(ext)
    patchcore.extractor = FakeExtractor(channels=(8, 12, 20))  # the last layer's width changed
    with pytest.raises(ValueError, match="fitted on"):
        patchcore.predict(x)
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCore(ext, coreset_ratio=0.0)
    with pytest.raises(ValueError, match="num_features"):
        PaDiM(ext, num_features=0)
    with pytest.raises(ValueError, match="exceeds"):
        PaDiM(ext, mode="concatenated", num_features=999, progress=False).fit(x)
    with pytest.raises(TypeError, match="list"):
        FeatureNorm(lambda p: torch.zeros(1, 2, 3, 3), progress=False).predict(x[:1])


def test_registry_and_build_detector(ext):
    assert {"featurenorm", "patchcore", "padim"} <= set(DETECTORS)
    det = build_detector("PatchCore", ext, coreset_ratio=0.5, progress=False)
    assert isinstance(det, PatchCore) and det.coreset_ratio == 0.5
    with pytest.raises(ValueError, match="featurenorm.*padim.*patchcore"):
        build_detector("knn", ext)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_coreset_on_gpu_matches_cpu():
    feats = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cpu = greedy_coreset_indices(feats, 0.1, 16, seed=2)
    gpu = greedy_coreset_indices(feats.cuda(), 0.1, 16, seed=2)
    assert gpu.device.type == "cuda" and gpu.cpu().tolist() == cpu.tolist()
