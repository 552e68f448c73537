"""Two-view photometric augmentation and row -> (image, mask) loading."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
from PIL import Image

from adpretrain_hf.data import TwoViewAugment, load_image_and_mask
from adpretrain_hf.data.augment import GRAYSCALE_PROB, _shift_hue


def colourful(seed: int = 0, size=(40, 28)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def is_gray(image: Image.Image) -> bool:
    a = np.asarray(image).astype(int)
    return bool(np.all(a[..., 0] == a[..., 1]) and np.all(a[..., 1] == a[..., 2]))


def test_views_keep_size_and_differ():
    augment = TwoViewAugment(seed=0)
    image = colourful()
    differing = 0
    for _ in range(10):
        v1, v2 = augment(image)
        assert v1.size == v2.size == image.size and v1.mode == v2.mode == "RGB"
        differing += not np.array_equal(np.asarray(v1), np.asarray(v2))
    assert differing >= 9


def test_reproducible_with_a_seed():
    image = colourful(1)
    a, b, c = TwoViewAugment(seed=5), TwoViewAugment(seed=5), TwoViewAugment(seed=6)
    runs_a = [np.asarray(v) for _ in range(4) for v in a(image)]
    runs_b = [np.asarray(v) for _ in range(4) for v in b(image)]
    runs_c = [np.asarray(v) for _ in range(4) for v in c(image)]
    assert all(np.array_equal(x, y) for x, y in zip(runs_a, runs_b))
    assert not all(np.array_equal(x, y) for x, y in zip(runs_a, runs_c))
    rng_views = [np.asarray(v) for v in TwoViewAugment()(image, rng=np.random.default_rng(9))]
    again = [np.asarray(v) for v in TwoViewAugment()(image, rng=np.random.default_rng(9))]
    assert all(np.array_equal(x, y) for x, y in zip(rng_views, again))


def test_grayscale_rate():
    augment = TwoViewAugment(seed=2)
    image = colourful(2, size=(8, 8))
    views = [v for _ in range(300) for v in augment(image)]
    rate = np.mean([is_gray(v) for v in views])
    # binomial standard error at n=600 is 0.016; allow four of them
    assert abs(rate - GRAYSCALE_PROB) < 0.065


def test_no_geometric_change():
    """A bright square stays where it is: the brightness centroid does not move."""
    canvas = np.zeros((48, 64, 3), np.uint8)
    canvas[10:20, 40:52] = (250, 200, 90)
    image = Image.fromarray(canvas)
    ys, xs = np.mgrid[0:48, 0:64]
    augment = TwoViewAugment(seed=3)
    for _ in range(10):
        for view in augment(image):
            weight = np.asarray(view.convert("L"), float)
            weight = np.clip(weight - np.median(weight), 0, None)
            cy, cx = (weight * ys).sum() / weight.sum(), (weight * xs).sum() / weight.sum()
            assert abs(cy - 14.5) < 0.5 and abs(cx - 45.5) < 0.5


def test_hue_shift_against_colorsys():
    rgb = np.array([[[230, 40, 40], [40, 200, 60], [30, 60, 220], [200, 180, 20]]], np.uint8)
    shifted = np.asarray(_shift_hue(Image.fromarray(rgb), 0.25)).astype(float)
    for pixel, got in zip(rgb[0], shifted[0]):
        h, s, v = colorsys.rgb_to_hsv(*(pixel / 255.0))
        expected = np.array(colorsys.hsv_to_rgb((h + 0.25) % 1.0, s, v)) * 255
        assert np.abs(got - expected).max() < 12  # PIL keeps H, S, V in 8 bits


def test_non_rgb_inputs_become_rgb():
    augment = TwoViewAugment(seed=0)
    for mode in ("L", "RGBA", "P"):
        views = augment(colourful(3).convert(mode))
        assert all(v.mode == "RGB" and v.size == (40, 28) for v in views)
    with pytest.raises(TypeError, match="PIL image"):
        augment(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="seed must be an int"):
        TwoViewAugment(seed="1")


def test_load_image_and_mask(tmp_path):
    gray = Image.fromarray(np.arange(12 * 10, dtype=np.uint8).reshape(10, 12), "L")
    image, mask = load_image_and_mask({"image": gray, "mask": None})
    assert image.mode == "RGB" and image.size == (12, 10)
    assert mask.mode == "L" and mask.size == (12, 10) and not np.asarray(mask).any()
    np.testing.assert_array_equal(np.asarray(image)[..., 1], np.asarray(gray))

    coded = np.zeros((10, 12), np.uint8)
    coded[2:5, 3:9] = 1  # VisA-style 0/1 mask
    Image.fromarray(coded, "L").save(tmp_path / "m.png")
    colourful(4, size=(12, 10)).convert("RGBA").save(tmp_path / "i.png")
    row = {"image": {"path": str(tmp_path / "i.png"), "bytes": None}, "mask": str(tmp_path / "m.png")}
    image, mask = load_image_and_mask(row)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(mask), coded * 255)

    sixteen = Image.fromarray(np.arange(120, dtype=np.uint16).reshape(10, 12) * 500)
    assert sixteen.mode.startswith("I;16")
    image, _ = load_image_and_mask({"image": sixteen, "mask": None})
    np.testing.assert_allclose(np.asarray(image)[..., 0], np.rint(np.arange(120).reshape(10, 12) * 500 / 257), atol=1)


def test_load_image_and_mask_errors(tmp_path):
    Image.new("L", (5, 5)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"mask size \(5, 5\) differs from image size \(12, 10\).*'s1'"):
        load_image_and_mask({"image": Image.new("RGB", (12, 10)), "mask": str(tmp_path / "small.png"),
                             "sample_id": "s1"})
    with pytest.raises(TypeError, match="dataset row"):
        load_image_and_mask(Image.new("RGB", (4, 4)))
    with pytest.raises(TypeError, match="a PIL image, a path"):
        load_image_and_mask({"image": 3})
