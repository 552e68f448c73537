"""Metrics vs independent slow computations.

The references below share no code with ``adpretrain_hf.metrics``: AUROC is an explicit
pairwise (Mann-Whitney) count; AUPRO loops over every distinct score as a threshold,
labels regions with scikit-image (the package uses scipy), measures each region's overlap
one by one, and integrates segment by segment with explicit clipping at the FPR limit.
"""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
import torch
from skimage.measure import label as sk_label

from adpretrain_hf.metrics import (
    AUPRO_FPR_LIMIT,
    METRIC_NAMES,
    RELEASE_NUM_THRESHOLDS,
    aupro,
    image_auroc,
    label_regions,
    load_metric,
    metric_module_path,
    pixel_auroc,
    pro_curve,
)

TOL = 1e-6


# --------------------------------------------------------------------------- references
def slow_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count 1/2."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = 0.0
    for p in pos:
        wins += np.sum(p > neg) + 0.5 * np.sum(p == neg)
    return wins / (pos.size * neg.size)


def sk_regions(masks: np.ndarray, connectivity: int = 2) -> list[tuple[int, np.ndarray]]:
    """(image index, boolean region mask) for every connected region, via scikit-image."""
    regions = []
    for i, mask in enumerate(masks):
        labelled = sk_label(mask.astype(np.uint8), connectivity=connectivity)
        for r in range(1, labelled.max() + 1):
            regions.append((i, labelled == r))
    return regions


def slow_curve_at(maps, masks, thresholds, marked_fn, connectivity=2):
    """FPR and PRO at each threshold, one region at a time."""
    regions = sk_regions(masks, connectivity)
    normal = masks == 0
    fprs, pros = [], []
    for t in thresholds:
        marked = marked_fn(maps, t)
        fprs.append((marked & normal).sum() / normal.sum())
        pros.append(np.mean([marked[i][reg].sum() / reg.sum() for i, reg in regions]))
    return np.array(fprs), np.array(pros)


def slow_mvtec_curve(maps, masks, connectivity=2):
    """Every distinct score, highest first, as threshold (score >= t); starts at (0, 0)."""
    thresholds = sorted(np.unique(maps).tolist(), reverse=True)
    fpr, pro = slow_curve_at(maps, masks, thresholds, lambda m, t: m >= t, connectivity)
    return np.concatenate(([0.0], fpr)), np.concatenate(([0.0], pro))


def slow_clipped_area(x, y, limit):
    """Area of the polyline over [0, limit], segment by segment, cutting the last one."""
    area = 0.0
    for x0, y0, x1, y1 in zip(x[:-1], y[:-1], x[1:], y[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_cut = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_cut) / 2
            break
    return area


def slow_aupro(maps, masks, limit=AUPRO_FPR_LIMIT, connectivity=2):
    fpr, pro = slow_mvtec_curve(maps, masks, connectivity)
    return slow_clipped_area(fpr, pro, limit) / limit


def slow_release_aupro(maps, masks, limit=AUPRO_FPR_LIMIT):
    """200 thresholds min + k (max - min) / 200, score > t, keep FPR < limit, rescale, area."""
    lo, hi = float(maps.min()), float(maps.max())
    step = (hi - lo) / RELEASE_NUM_THRESHOLDS
    thresholds = [lo + k * step for k in range(RELEASE_NUM_THRESHOLDS)]
    fpr, pro = slow_curve_at(maps, masks, thresholds, lambda m, t: m > t)
    keep = fpr < limit
    f, p = fpr[keep], pro[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return sum(abs(f[i + 1] - f[i]) * (p[i] + p[i + 1]) / 2 for i in range(f.size - 1))


# --------------------------------------------------------------------------- test data
def blob_masks(rng, n=6, size=16, defect_prob=0.7) -> np.ndarray:
    """[n, size, size] uint8 masks: random ellipses, some single pixels, some empty images."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        if rng.random() > defect_prob:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.uniform(0.5, size / 4, 2)
            masks[i] |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
        if rng.random() < 0.5:
            masks[i, rng.integers(size), rng.integers(size)] = 1
    if masks.sum() == 0:
        masks[0, 3, 3] = 1
    return masks


def noisy_maps(rng, masks, signal=0.6, decimals=None) -> np.ndarray:
    maps = masks * signal + rng.random(masks.shape)
    return np.round(maps, decimals) if decimals is not None else maps


# --------------------------------------------------------------------------- AUROC
@pytest.mark.parametrize("seed", [0, 1])
def test_image_auroc_matches_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    scores = np.round(labels * 0.3 + rng.random(40), 1)  # rounding makes ties
    assert image_auroc(scores, labels) == pytest.approx(slow_auroc(scores, labels), abs=1e-12)
    as_torch = image_auroc(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels))
    assert as_torch == pytest.approx(slow_auroc(scores, labels), abs=1e-12)


def test_pixel_auroc_matches_pairwise_count_and_accepts_channel_dim():
    rng = np.random.default_rng(2)
    masks = blob_masks(rng, n=4, size=10)
    maps = noisy_maps(rng, masks, decimals=1)
    expected = slow_auroc(maps.ravel(), masks.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert pixel_auroc(torch.from_numpy(maps).float(), torch.from_numpy(masks)[:, None]) == (
        pytest.approx(expected, abs=1e-6)
    )


@pytest.mark.parametrize(
    "scores, labels, error, match",
    [
        ([0.1, 0.2], [1, 1], ValueError, "both classes"),
        ([0.1, 0.2], [0, 0], ValueError, "both classes"),
        ([0.1, 0.2, 0.3], [0, 1], ValueError, "one label per score"),
        ([0.1, float("nan")], [0, 1], ValueError, "NaN"),
        ([0.1, 0.2], [0, 2], ValueError, "only 0 and 1"),
        (None, [0, 1], TypeError, "None"),
        ("0.1", [0, 1], TypeError, "str"),
        ([[0.1, 0.2]], [[0, 1]], ValueError, "1-d"),
    ],
)
def test_image_auroc_bad_input(scores, labels, error, match):
    with pytest.raises(error, match=match):
        image_auroc(scores, labels)


def test_pixel_auroc_bad_input():
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(ValueError, match="both classes"):
        pixel_auroc(maps, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="does not match"):
        pixel_auroc(maps, np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        pixel_auroc(maps[0], np.zeros((4, 4)))


# --------------------------------------------------------------------------- regions
def test_label_regions_matches_skimage_8_connectivity():
    rng = np.random.default_rng(3)
    masks = rng.random((5, 12, 12)) < 0.3  # many diagonal contacts
    ids, sizes = label_regions(masks)
    expected = sk_regions(masks)
    assert sizes.size - 1 == len(expected)
    assert sorted(sizes[1:].tolist()) == sorted(int(r.sum()) for _, r in expected)
    assert int(sizes[0]) == int((~masks).sum())
    for i, region in expected:  # each skimage region is exactly one of ours
        assert np.unique(ids[i][region]).size == 1
        assert (ids[i] == ids[i][region][0]).sum() == region.sum()


# --------------------------------------------------------------------------- AUPRO (mvtec)
@pytest.mark.parametrize("seed, decimals", [(0, None), (1, None), (2, 1), (3, 2)])
def test_aupro_matches_slow_reference_on_random_blobs(seed, decimals):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng)
    maps = noisy_maps(rng, masks, decimals=decimals)
    for limit in (0.05, AUPRO_FPR_LIMIT, 1.0):
        assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(
            slow_aupro(maps, masks, limit), abs=TOL
        )


def test_pro_curve_equals_slow_curve_point_by_point():
    rng = np.random.default_rng(4)
    masks = blob_masks(rng, n=4, size=12)
    maps = noisy_maps(rng, masks, decimals=1)
    fpr, pro, thresholds = pro_curve(maps, masks)
    slow_fpr, slow_pro = slow_mvtec_curve(maps, masks)
    np.testing.assert_allclose(fpr, slow_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, slow_pro, atol=1e-12)
    np.testing.assert_array_equal(thresholds, np.unique(maps)[::-1])


def test_aupro_perfect_and_inverted_maps():
    masks = blob_masks(np.random.default_rng(5))
    perfect = masks.astype(np.float64)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=TOL)
    assert slow_aupro(perfect, masks) == pytest.approx(1.0, abs=TOL)
    inverted = 1.0 - perfect
    assert aupro(inverted, masks) == pytest.approx(slow_aupro(inverted, masks), abs=TOL)
    assert aupro(inverted, masks) == pytest.approx(0.0, abs=TOL)


def test_aupro_single_pixel_defect():
    rng = np.random.default_rng(6)
    masks = np.zeros((2, 9, 9), dtype=np.uint8)
    masks[1, 4, 7] = 1
    maps = rng.random(masks.shape)
    assert aupro(maps, masks) == pytest.approx(slow_aupro(maps, masks), abs=TOL)
    maps[1, 4, 7] = 2.0  # found first: PRO jumps to 1 at FPR 0
    assert aupro(maps, masks) == pytest.approx(1.0, abs=TOL)


def test_aupro_two_regions_of_different_sizes_weigh_equally():
    masks = np.zeros((1, 10, 10), dtype=np.uint8)
    masks[0, 1:4, 1:5] = 1  # 12 pixels
    masks[0, 8, 8] = 1  # 1 pixel
    rng = np.random.default_rng(7)
    maps = rng.random(masks.shape) * 0.5
    maps[0, 1:4, 1:5] += 1.0  # big region found first
    got = aupro(maps, masks)
    assert got == pytest.approx(slow_aupro(maps, masks), abs=TOL)
    assert 0.4 < got < 0.9  # half of the regions found at FPR 0, not 12/13 of the pixels


def test_aupro_uses_8_connectivity():
    """Diagonal neighbours form one region; 4-connectivity would give another number."""
    masks = np.zeros((1, 6, 6), dtype=np.uint8)
    masks[0, 1, 1] = masks[0, 2, 2] = masks[0, 4, 4] = 1
    maps = np.random.default_rng(8).random(masks.shape)
    maps[0, 1, 1], maps[0, 2, 2], maps[0, 4, 4] = 5.0, 0.0, 0.5
    got = aupro(maps, masks)
    assert got == pytest.approx(slow_aupro(maps, masks, connectivity=2), abs=TOL)
    assert abs(got - slow_aupro(maps, masks, connectivity=1)) > 0.01


def test_aupro_images_without_defects_only_add_negatives():
    rng = np.random.default_rng(9)
    defective = blob_masks(rng, n=2, defect_prob=1.0)
    masks = np.concatenate([defective, np.zeros((3, 16, 16), np.uint8)])
    maps = noisy_maps(rng, masks)
    assert aupro(maps, masks) == pytest.approx(slow_aupro(maps, masks), abs=TOL)
    # The defect-free images change the curve only through the FPR axis.
    fpr_all, pro_all, _ = pro_curve(maps, masks)
    assert pro_all[-1] == pytest.approx(1.0) and fpr_all[-1] == 1.0


def test_aupro_input_forms_agree():
    rng = np.random.default_rng(10)
    masks = blob_masks(rng)
    maps = noisy_maps(rng, masks).astype(np.float32)
    expected = aupro(maps, masks)
    assert aupro(torch.from_numpy(maps), torch.from_numpy(masks)[:, None].bool()) == expected
    assert aupro(maps[:, None], masks.astype(np.float32)) == expected
    assert aupro(maps, masks) == pytest.approx(slow_aupro(maps.astype(np.float64), masks), abs=TOL)


def test_float32_packed_sort_matches_float64_argsort_path():
    """float32 maps take the packed-key sort; negatives, -0.0 vs +0.0 and ties must behave."""
    rng = np.random.default_rng(13)
    masks = blob_masks(rng)
    maps = np.round(noisy_maps(rng, masks) * 4 - 2, 1).astype(np.float32)
    maps[1, :3, :3], maps[2, :3, :3] = -0.0, 0.0  # equal as floats: one threshold
    maps[3, 0, :4] = [np.finfo(np.float32).max, np.finfo(np.float32).min, 1e-45, -1e-45]
    fpr32, pro32, th32 = pro_curve(maps, masks)
    fpr64, pro64, th64 = pro_curve(maps.astype(np.float64), masks)
    np.testing.assert_array_equal(fpr32, fpr64)
    np.testing.assert_allclose(pro32, pro64, atol=1e-12)
    np.testing.assert_array_equal(th32.astype(np.float64), th64)
    slow_fpr, slow_pro = slow_mvtec_curve(maps.astype(np.float64), masks)
    np.testing.assert_allclose(fpr32, slow_fpr, atol=1e-12)
    np.testing.assert_allclose(pro32, slow_pro, atol=1e-12)


@pytest.mark.parametrize(
    "maps, masks, kwargs, error, match",
    [
        (np.ones((2, 4, 4)), np.zeros((2, 4, 4)), {}, ValueError, "at least one anomalous pixel"),
        (np.ones((1, 2, 2)), np.ones((1, 2, 2)), {}, ValueError, "at least one normal pixel"),
        (np.full((1, 2, 2), np.nan), np.eye(2)[None], {}, ValueError, "NaN"),
        (np.ones((1, 2, 2)), np.eye(2)[None] * 0.5, {}, ValueError, "only 0 and 1"),
        (np.ones((1, 2, 2)), np.eye(2)[None], {"variant": "anomalib"}, ValueError, "variant"),
        (np.ones((1, 2, 2)), np.eye(2)[None], {"fpr_limit": 0.0}, ValueError, "outside"),
        (np.ones((1, 2, 2)), np.eye(2)[None], {"fpr_limit": "0.3"}, TypeError, "number"),
        (np.ones((1, 2, 2)), np.ones((1, 2, 2, 2)), {}, ValueError, r"\[N, 1, H, W\]"),
    ],
)
def test_aupro_bad_input(maps, masks, kwargs, error, match):
    with pytest.raises(error, match=match):
        aupro(maps, masks, **kwargs)


# --------------------------------------------------------------------------- AUPRO (release)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_release_aupro_matches_slow_loop(seed):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng)
    maps = noisy_maps(rng, masks)
    got = aupro(maps, masks, variant="release")
    assert got == pytest.approx(slow_release_aupro(maps, masks), abs=TOL)
    assert abs(got - aupro(maps, masks)) > 1e-4  # a different number from the standard one


def test_release_aupro_scores_on_the_threshold_grid():
    """Integer scores 0..200 put pixels exactly on thresholds t_k = k, so strict '>' matters
    (normal pixels at 199 and 200 make the lowest FPR depend on it); 24 of 80 normal pixels
    above 100 give points with FPR exactly 0.3, so the strict '< fpr_limit' matters."""
    rng = np.random.default_rng(12)
    masks = np.zeros((1, 10, 10), dtype=np.uint8)
    masks[0, 2:6, 3:8] = 1  # 20 anomalous, 80 normal pixels
    maps = rng.integers(0, 101, masks.shape).astype(np.float64)
    flat = maps.reshape(-1)
    normal = np.flatnonzero(masks.reshape(-1) == 0)
    flat[np.flatnonzero(masks.reshape(-1))] = rng.integers(90, 200, 20)
    flat[normal[0]], flat[normal[1]] = 0.0, 200.0  # pin min and max
    flat[normal[2:4]] = 199.0
    flat[normal[4:25]] = 150.0
    got = aupro(maps, masks, variant="release")
    assert got == pytest.approx(slow_release_aupro(maps, masks), abs=TOL)
    # Random integer maps, many ties on thresholds.
    masks = blob_masks(rng)
    maps = np.clip(rng.integers(0, 170, masks.shape) + 30 * masks, 0, 200).astype(np.float64)
    maps[0, 0, 0], maps[0, 0, 1] = 0.0, 200.0
    assert aupro(maps, masks, variant="release") == pytest.approx(
        slow_release_aupro(maps, masks), abs=TOL
    )


def test_release_aupro_degenerate_inputs_raise():
    masks = np.eye(4)[None]
    with pytest.raises(ValueError, match="two distinct values"):
        aupro(np.ones((1, 4, 4)), masks, variant="release")
    with pytest.raises(ValueError, match="fewer than two distinct FPR"):
        aupro(1.0 - masks, masks, variant="release")  # every kept FPR is 0


# --------------------------------------------------------------------------- evaluate modules
@pytest.fixture(scope="module")
def offline_evaluate(tmp_path_factory):
    """evaluate with HF_EVALUATE_OFFLINE=1, every cache under tmp, and no socket allowed.

    evaluate reads its environment once at import, so besides the variables the values it
    derived from them (``evaluate.config``) are patched too. Its dynamic-module package is
    cached in sys.modules per cache directory, so it is isolated and restored afterwards.
    """
    root = tmp_path_factory.mktemp("hf")
    env = {
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HOME": str(root),
        "HF_MODULES_CACHE": str(root / "modules"),
        "HF_METRICS_CACHE": str(root / "metrics"),
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
    }
    saved_path = list(sys.path)
    cached_names = [k for k in sys.modules if k.startswith("evaluate_modules")]
    saved_modules = {k: sys.modules.pop(k) for k in cached_names}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        import evaluate.config as cfg

        mp.setattr(cfg, "HF_EVALUATE_OFFLINE", True)
        mp.setattr(cfg, "HF_UPDATE_DOWNLOAD_COUNTS", False)
        mp.setattr(cfg, "HF_CACHE_HOME", str(root))
        for name, sub in [
            ("HF_MODULES_CACHE", "modules"),
            ("HF_METRICS_CACHE", "metrics"),
            ("HF_EVALUATE_CACHE", "evaluate"),
            ("DOWNLOADED_EVALUATE_PATH", "evaluate/downloads"),
            ("EXTRACTED_EVALUATE_PATH", "evaluate/downloads/extracted"),
        ]:
            mp.setattr(cfg, name, root / sub)

        def no_network(*args, **kwargs):
            raise AssertionError("a metric tried to open a network connection")

        mp.setattr(socket.socket, "connect", no_network)
        yield root
    sys.path[:] = saved_path
    for key in [k for k in sys.modules if k.startswith("evaluate_modules")]:
        del sys.modules[key]
    sys.modules.update(saved_modules)


def test_load_metric_matches_plain_functions_offline(offline_evaluate):
    import adpretrain_hf.metrics as plain

    rng = np.random.default_rng(11)
    masks = blob_masks(rng, n=5, size=12)
    maps = noisy_maps(rng, masks).astype(np.float32)  # evaluate stores float32

    metric = load_metric("aupro")
    for start in range(0, 5, 2):  # accumulate like an evaluation loop
        metric.add_batch(predictions=maps[start:start + 2], references=masks[start:start + 2])
    assert metric.compute()["aupro"] == pytest.approx(aupro(maps, masks), abs=1e-12)
    release = load_metric("aupro").compute(
        predictions=torch.from_numpy(maps), references=torch.from_numpy(masks), variant="release"
    )
    assert release["aupro"] == pytest.approx(aupro(maps, masks, variant="release"), abs=1e-12)

    pixel = load_metric("pixel_auroc").compute(predictions=maps, references=masks)
    assert pixel["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks), abs=1e-12)

    scores, labels = rng.random(12), rng.integers(0, 2, 12)
    image = load_metric("image_auroc").compute(predictions=scores, references=labels)
    assert image["image_auroc"] == pytest.approx(slow_auroc(scores, labels), abs=1e-12)

    # One implementation: the cached module calls the package's own function object.
    module = sys.modules[type(metric).__module__]
    assert module.aupro is plain.aupro
    # Everything was written under the temporary HF home, nothing to ~/.cache.
    cached = list((offline_evaluate / "modules").rglob("aupro.py"))
    assert cached and cached[0].read_text() == metric_module_path("aupro").read_text()


def test_evaluate_module_reports_plain_errors(offline_evaluate):
    metric = load_metric("aupro")
    with pytest.raises(ValueError, match="at least one anomalous pixel"):
        metric.compute(predictions=np.ones((2, 3, 3)), references=np.zeros((2, 3, 3)))


def test_load_metric_unknown_name():
    with pytest.raises(ValueError, match="one of"):
        load_metric("f1")
    assert all(metric_module_path(name).is_file() for name in METRIC_NAMES)
