"""adpretrain_hf.diagnostics: patch norms, their AUROC and the histogram figure, against explicit loops.

The references here share no code with the package: a patch's label is counted pixel by pixel
over its block of the mask, its norm is a square root of a sum over channels in numpy, and the
AUROC is a pairwise (Mann-Whitney) count. Features come from a fake extractor (a fixed random
projection of pooled pixels) so the bookkeeping can be checked exactly, and once from the real
extractor on the tiny-clip preset.
"""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.diagnostics import norm_separation, patch_norms, plot_norm_histograms
from adpretrain_hf.extractor import ModelFeatureExtractor

IMAGE_SIZE = 16
GRIDS = ((4, 4), (2, 4), (8, 8))  # one non-square grid: rows and columns must not be swapped
CHANNELS = (3, 5, 2)
NUM_IMAGES = 20  # more than one of patch_norms' chunks of 16 images
THRESHOLD = 0.25


class PooledProjectionExtractor(torch.nn.Module):
    """``[B, 3, H, W] -> [[B, C_l, h_l, w_l]]``: pooled pixels through a fixed random 1x1 projection.

    The weights are parameters, so the outputs carry gradients unless the caller disables them
    (patch_norms must, to turn norms into numpy). Records the batch sizes it was called with.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weights = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(c, 3, generator=g)) for c in CHANNELS)
        self.batch_sizes: list[int] = []

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        self.batch_sizes.append(pixel_values.shape[0])
        pooled = [F.adaptive_avg_pool2d(pixel_values, grid) for grid in GRIDS]
        return [torch.einsum("oc,bchw->bohw", w, p) for w, p in zip(self.weights, pooled)]


def slow_patch_label(mask: np.ndarray, grid: tuple[int, int], row: int, col: int, threshold: float) -> bool:
    """True when more than ``threshold`` of the patch's pixels are masked (sizes divide evenly here)."""
    bh, bw = mask.shape[0] // grid[0], mask.shape[1] // grid[1]
    masked = sum(int(mask[y, x]) for y in range(row * bh, (row + 1) * bh) for x in range(col * bw, (col + 1) * bw))
    return masked / (bh * bw) > threshold


def slow_patch_norms(features_per_image, masks: np.ndarray, threshold: float) -> dict[str, list[float]]:
    """Every patch of every layer of every image, one at a time; features_per_image[i][l] is [C, h, w]."""
    normal, anomalous = [], []
    for i, layers in enumerate(features_per_image):
        for feat in layers:
            grid = feat.shape[1:]
            for row in range(grid[0]):
                for col in range(grid[1]):
                    norm = float(np.sqrt(np.sum(feat[:, row, col].astype(np.float64) ** 2)))
                    label = slow_patch_label(masks[i], grid, row, col, threshold)
                    (anomalous if label else normal).append(norm)
    return {"normal": normal, "anomalous": anomalous}


def slow_auroc(negatives, positives) -> float:
    """P(random positive > random negative), ties count 1/2."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def boundary_masks(num_images: int, seed: int) -> np.ndarray:
    """[N, 16, 16] 0/1 masks: random blocks, some empty images, and image 1 with one 4x4-grid patch
    masked at exactly THRESHOLD (normal: the rule is strict) and one above it (anomalous)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_images, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i in range(num_images):
        if i % 3 == 0:
            continue  # some defect-free images
        y, x = rng.integers(0, IMAGE_SIZE - 4, 2)
        h, w = rng.integers(1, 7, 2)
        masks[i, y:y + h, x:x + w] = 1
    masks[1] = 0
    masks[1, 0, 0:4] = 1  # 4 of the 16 pixels of 4x4-grid patch (0, 0): normal
    masks[1, 4:6, 8:11] = 1  # 6 of the 16 pixels of 4x4-grid patch (1, 2): anomalous
    return masks


@pytest.fixture
def extractor():
    return PooledProjectionExtractor()


@pytest.fixture
def images():
    return torch.rand(NUM_IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


def test_patch_norms_match_a_patch_by_patch_loop(extractor, images):
    masks = boundary_masks(NUM_IMAGES, seed=2)
    got = patch_norms(extractor, images, torch.from_numpy(masks), THRESHOLD)

    with torch.no_grad():  # one image at a time: the chunking must not change anything
        per_image = [[f[0].numpy() for f in extractor(images[i:i + 1])] for i in range(NUM_IMAGES)]
    expected = slow_patch_norms(per_image, masks, THRESHOLD)
    total = NUM_IMAGES * sum(h * w for h, w in GRIDS)
    assert len(got["normal"]) + len(got["anomalous"]) == total
    for kind in ("normal", "anomalous"):  # the same multiset (patch_norms groups by chunk and layer)
        assert got[kind].dtype == np.float32
        np.testing.assert_allclose(np.sort(got[kind]), np.sort(expected[kind]), rtol=1e-5)
    assert 0 < len(got["anomalous"]) < len(got["normal"])


def test_patch_norms_label_boundary_is_strict(extractor):
    """A patch masked at exactly the threshold fraction is normal; one pixel more makes it anomalous."""
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE)
    masks[0, 0, 0:4] = 1  # image 0: 4 + 2 masked pixels in the top-left corner
    masks[0, 1, 0:2] = 1
    masks[1, 0, 0:4] = 1  # image 1: exactly 4 of 16 on the 4x4 grid (normal there)
    got = patch_norms(extractor, images, masks, THRESHOLD)
    with torch.no_grad():
        feats = extractor(images)
    norms = [f.norm(dim=1).numpy() for f in feats]  # [2, h, w] per layer
    # Anomalous patches, worked out by hand for each layer:
    #   4x4 grid (4x4-pixel patches): image 0 patch (0,0) has 6/16 -> anomalous; image 1's 4/16 is not.
    #   2x4 grid (8x4-pixel patches): image 0 has 6/32, image 1 has 4/32 -> both normal.
    #   8x8 grid (2x2-pixel patches): image 0 patches (0,0), (0,1) hold 4/4 and 2/4 -> both anomalous;
    #   image 1 patches (0,0), (0,1) hold 2/4 each -> both anomalous.
    expected_anomalous = [norms[0][0, 0, 0], norms[2][0, 0, 0], norms[2][0, 0, 1], norms[2][1, 0, 0], norms[2][1, 0, 1]]
    np.testing.assert_allclose(np.sort(got["anomalous"]), np.sort(expected_anomalous), rtol=1e-6)
    assert len(got["normal"]) == 2 * sum(h * w for h, w in GRIDS) - len(expected_anomalous)


def test_patch_norms_run_without_gradients_in_chunks_of_at_most_16(extractor, images):
    """The fake extractor's outputs carry gradients unless disabled; numpy() would fail on them."""
    patch_norms(extractor, images, torch.zeros(NUM_IMAGES, 1, IMAGE_SIZE, IMAGE_SIZE), THRESHOLD)
    assert sum(extractor.batch_sizes) == NUM_IMAGES
    assert len(extractor.batch_sizes) > 1 and max(extractor.batch_sizes) <= 16


def test_patch_norms_without_defects_are_all_normal(extractor, images):
    got = patch_norms(extractor, images, torch.zeros(NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE), THRESHOLD)
    assert got["anomalous"].size == 0
    assert got["normal"].size == NUM_IMAGES * sum(h * w for h, w in GRIDS)
    assert norm_separation(got) is None


def test_patch_norms_with_the_real_extractor_on_tiny_clip():
    torch.manual_seed(0)
    model = ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).eval()
    extractor = ModelFeatureExtractor(model, feature_kind="backbone")
    size = model.config.image_size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(4))
    masks = np.zeros((2, size, size), dtype=np.uint8)
    masks[0, : size // 2, : size // 2] = 1  # the top-left quarter of image 0
    got = patch_norms(extractor, images, torch.from_numpy(masks), THRESHOLD)
    with torch.no_grad():
        per_image = [[f[0].numpy() for f in extractor(images[i:i + 1])] for i in range(2)]
    expected = slow_patch_norms(per_image, masks, THRESHOLD)
    grid = model.grid_sizes[0]
    assert len(expected["anomalous"]) == len(model.config.layers) * (grid[0] // 2) * (grid[1] // 2)
    for kind in ("normal", "anomalous"):
        np.testing.assert_allclose(np.sort(got[kind]), np.sort(expected[kind]), rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_norm_separation_is_the_pairwise_auroc(seed):
    rng = np.random.default_rng(seed)
    norms = {"normal": np.round(rng.random(30), 1), "anomalous": np.round(rng.random(12) + 0.2, 1)}  # ties
    expected = slow_auroc(norms["normal"], norms["anomalous"])
    assert norm_separation(norms) == pytest.approx(expected, abs=1e-12)
    swapped = {"normal": norms["anomalous"], "anomalous": norms["normal"]}
    assert norm_separation(swapped) == pytest.approx(1.0 - expected, abs=1e-12)


def test_norm_separation_extremes_and_missing_kinds():
    assert norm_separation({"normal": np.array([1.0, 2.0]), "anomalous": np.array([3.0])}) == 1.0
    assert norm_separation({"normal": np.array([1.0, 1.0]), "anomalous": np.array([1.0])}) == 0.5
    assert norm_separation({"normal": np.array([1.0]), "anomalous": np.array([])}) is None
    assert norm_separation({"normal": np.array([]), "anomalous": np.array([1.0])}) is None


def _figure_texts(monkeypatch) -> list:
    """Capture every figure plot_norm_histograms closes, to read its titles and legends."""
    import matplotlib.pyplot as plt

    closed = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (closed.append(fig), real_close(fig)))
    return closed


def test_histogram_figure_has_one_panel_per_kind_with_the_auroc(tmp_path, monkeypatch):
    closed = _figure_texts(monkeypatch)
    rng = np.random.default_rng(5)
    by_kind = {
        "backbone": {"normal": rng.random(40), "anomalous": rng.random(9)},
        "pretrained": {"normal": rng.random(40), "anomalous": rng.random(9) + 0.5},
        "empty": {"normal": rng.random(5), "anomalous": np.array([])},
    }
    gc.collect()  # objects other tests left unclosed (sockets) are finalised here, not inside the check
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty kind must not warn (numpy's density of an empty histogram)
        path = plot_norm_histograms(by_kind, tmp_path / "hist.png", title="held-out")
    assert path == tmp_path / "hist.png" and path.is_file()
    (fig,) = closed
    assert [ax.get_title() for ax in fig.axes] == [
        f"backbone features: patch-norm AUROC {slow_auroc(*by_kind['backbone'].values()):.3f}",
        f"pretrained features: patch-norm AUROC {slow_auroc(*by_kind['pretrained'].values()):.3f}",
        "empty",  # no AUROC without anomalous patches
    ]
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legends[0] == ["normal (40)", "anomalous (9)"] and legends[2] == ["normal (5)", "anomalous (0)"]
    assert fig.texts[0].get_text() == "held-out"


def test_histogram_width_grows_with_the_number_of_kinds(tmp_path):
    rng = np.random.default_rng(6)
    one = {"normal": rng.random(20), "anomalous": rng.random(5)}
    narrow = Image.open(plot_norm_histograms({"a": one}, tmp_path / "one.png")).size
    wide = Image.open(plot_norm_histograms({"a": one, "b": one}, str(tmp_path / "two.png"))).size
    assert wide[1] == narrow[1]
    assert wide[0] == pytest.approx(2 * narrow[0], abs=2)


@pytest.mark.parametrize(
    "masks, threshold, match",
    [
        (torch.full((2, IMAGE_SIZE, IMAGE_SIZE), 255.0), THRESHOLD, "binarise"),  # 0/255 masks
        (torch.zeros(2, 2, IMAGE_SIZE, IMAGE_SIZE), THRESHOLD, r"\[B, H, W\]"),  # two channels
        (torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE), 1.0, r"threshold must be a fraction in \[0, 1\)"),
    ],
)
def test_bad_masks_and_thresholds_are_one_line_errors(extractor, masks, threshold, match):
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ValueError, match=match) as caught:
        patch_norms(extractor, images, masks, threshold)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("num_masks", [1, 3])
def test_mask_count_must_match_the_image_count(extractor, num_masks):
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ValueError, match=f"got {num_masks} masks for 2 images: pass one mask per image") as caught:
        patch_norms(extractor, images, torch.zeros(num_masks, IMAGE_SIZE, IMAGE_SIZE), THRESHOLD)
    assert "\n" not in str(caught.value)


def test_an_empty_batch_is_a_one_line_error(extractor):
    with pytest.raises(ValueError, match="non-empty .* pass at least one image") as caught:
        patch_norms(extractor, torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE), torch.zeros(0, IMAGE_SIZE, IMAGE_SIZE), 0.1)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "by_kind, match",
    [
        ({"backbone": {"normal": np.array([]), "anomalous": np.array([])}}, "feature kind 'backbone' has no patches"),
        ({}, "by_kind is empty"),
    ],
)
def test_a_kind_without_patches_is_a_one_line_error(tmp_path, by_kind, match):
    with pytest.raises(ValueError, match=match) as caught:
        plot_norm_histograms(by_kind, tmp_path / "hist.png")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "hist.png").exists()


def test_a_kind_without_normal_patches_draws_without_warnings(tmp_path, monkeypatch):
    closed = _figure_texts(monkeypatch)
    norms = {"normal": np.array([]), "anomalous": np.random.default_rng(7).random(6)}
    gc.collect()  # objects other tests left unclosed (sockets) are finalised here, not inside the check
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the drawing itself warns about nothing (empty histogram, density)
        plot_norm_histograms({"only-anomalous": norms}, tmp_path / "hist.png")
    (fig,) = closed
    assert fig.axes[0].get_title() == "only-anomalous"
    heights = [patch.get_height() for patch in fig.axes[0].patches]
    # the anomalous histogram is a density: its bars integrate to one over the bin widths
    widths = [patch.get_width() for patch in fig.axes[0].patches]
    assert sum(h * w for h, w in zip(heights, widths)) == pytest.approx(1.0)
