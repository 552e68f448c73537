"""Two-view photometric augmentation and row -> (image, mask) loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from adpretrain_hf.data import TwoViewAugment, load_image_and_mask
from adpretrain_hf.data import augment as augment_module
from adpretrain_hf.data.augment import GRAYSCALE_PROB


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
    rng_views = [np.asarray(v) for v in TwoViewAugment()(image, generator=torch.Generator().manual_seed(9))]
    again = [np.asarray(v) for v in TwoViewAugment(generator=torch.Generator().manual_seed(9))(image)]
    assert all(np.array_equal(x, y) for x, y in zip(rng_views, again))
    reseeded = TwoViewAugment(seed=6)
    reseeded.reseed(5)
    assert all(np.array_equal(x, np.asarray(y)) for x, y in zip(runs_a[:2], reseeded(image)))


def test_tensor_views_are_reproducible_and_global_rng_free():
    pixels = torch.rand(3, 16, 20, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    a = TwoViewAugment(seed=11)(pixels)
    torch.manual_seed(2)  # the global RNG must not matter
    b = TwoViewAugment(seed=11)(pixels)
    for x, y in zip(a, b):
        assert x.shape == pixels.shape and x.dtype == torch.float32
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert not torch.equal(a[0], a[1])


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


def test_non_rgb_inputs_become_rgb():
    augment = TwoViewAugment(seed=0)
    for mode in ("L", "RGBA", "P"):
        views = augment(colourful(3).convert(mode))
        assert all(v.mode == "RGB" and v.size == (40, 28) for v in views)
    with pytest.raises(TypeError, match="PIL image"):
        augment(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        augment(torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match="not both"):
        TwoViewAugment(seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="seed must be an int"):
        TwoViewAugment(seed="1")


def _independent_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian (+-3 sigma, reflect padding) of ``[3, H, W]``, in plain torch."""
    half = math.ceil(3 * sigma)
    x = torch.arange(-half, half + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).float()
    padded = F.pad(image[None], (half, half, half, half), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)[0]


def test_pipeline_blurs_the_processed_view(monkeypatch):
    """Resize + crop first, then the blur: the view is an independent blur of the resized image."""
    from adpretrain_hf.modeling import ADPretrainConfig
    from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor
    from adpretrain_hf.training.data_pipeline import TwoViewTransform
    from adpretrain_hf.training.seeding import AUGMENT_STREAM, derived_seed

    monkeypatch.setattr(augment_module, "COLOR_JITTER_PROB", 0.0)
    monkeypatch.setattr(augment_module, "GRAYSCALE_PROB", 0.0)
    monkeypatch.setattr(augment_module, "BLUR_PROB", 1.0)
    processor = ADPretrainImageProcessor.from_adpretrain_config(ADPretrainConfig.from_preset("tiny-clip"))
    source = colourful(7, size=(256, 256)).resize((256, 256))  # 4x the model's 64 px
    seed = 13
    out = TwoViewTransform(processor, seed=seed)(  # the training path: row 0 of epoch 0
        {"image": [source], "mask": [None], "category": ["c"], "view": [""], "row_index": [0]}
    )
    # The same draws, independently: three Bernoulli draws, then sigma ~ U[0.1, 2.0], per view.
    g = torch.Generator().manual_seed(derived_seed(seed, AUGMENT_STREAM, 0, 0))
    sigmas = []
    for _ in range(2):
        torch.rand((), generator=g), torch.rand((), generator=g), torch.rand((), generator=g)
        sigmas.append(0.1 + 1.9 * float(torch.rand((), generator=g)))
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    resized = torch.from_numpy(np.array(source.resize((64, 64), Image.BICUBIC))).permute(2, 0, 1).float() / 255
    for key, sigma in zip(("view1", "view2"), sigmas):
        view = out[key][0] * std + mean
        expected = _independent_blur(resized, sigma)
        torch.testing.assert_close(view, expected, rtol=0, atol=2e-3)
        # Blurring the 256 px source with the same sigma, then resizing, is 4x weaker: clearly different.
        weak = _independent_blur(torch.from_numpy(np.array(source)).permute(2, 0, 1).float() / 255, sigma)
        weak = F.interpolate(weak[None], size=(64, 64), mode="bicubic", antialias=True, align_corners=False)[0]
        assert (view - weak).abs().mean() > 5 * (view - expected).abs().mean()


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


def test_open_image_applies_exif_orientation_like_the_pipelines_reader(tmp_path):
    """Training and evaluation read images through the package's one reader: an EXIF orientation 6
    JPEG comes out rotated (upright), as read_image shows it to the pipelines (issue 23)."""
    from PIL import Image

    from adpretrain_hf.data.augment import open_image
    from adpretrain_hf.modeling.image_io_adpretrain import read_image

    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :10] = 255  # a bright left band: its place tells the orientation
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    opened = open_image(str(path)).convert("RGB")
    assert opened.size == (20, 40)  # width, height swapped: the stored 40x20 is shown 20x40
    assert np.array_equal(np.asarray(opened), np.asarray(read_image(str(path))))
    assert np.asarray(open_image({"path": str(path), "bytes": None}).convert("RGB")).shape == (40, 20, 3)
    assert np.asarray(open_image({"path": None, "bytes": path.read_bytes()}).convert("RGB")).shape == (40, 20, 3)
