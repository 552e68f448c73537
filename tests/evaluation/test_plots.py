"""adpretrain_hf.evaluation.plots: which images get overlays, the overlay sheets, and the bar chart.

References: the spreading rule written out by hand, the normalisation inverted with numpy, the
sheet's input tile compared pixel by pixel with the image upscaled by np.kron, and the chart's
bar heights read back from the matplotlib figure.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from adpretrain_hf.evaluation import plots
from adpretrain_hf.evaluation.plots import (
    MIN_TILE_SIZE,
    TILE_GAP,
    TITLE_HEIGHT,
    pick_overlay_indices,
    save_comparison_chart,
    save_overlays,
    to_display,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.mark.parametrize(
    "count, expected",
    [
        (0, []),
        (1, [1]),  # the first anomalous image
        (2, [1, 7]),  # the first and last anomalous: spread over the group
        (3, [1, 4, 7]),
        (5, [1, 4, 7, 0, 6]),  # every anomalous image, then the first and last normal ones
        (20, [1, 4, 7, 0, 2, 3, 5, 6]),  # more than there are: all of them, anomalous first
    ],
)
def test_pick_overlay_indices(count, expected):
    labels = [0, 1, 0, 0, 1, 0, 0, 1]
    assert pick_overlay_indices(labels, count) == expected


def test_to_display_inverts_the_normalisation():
    rng = np.random.default_rng(0)
    image = rng.random((6, 5, 3))
    image[0, 0] = [1.2, -0.1, 0.5]  # out of range after a round trip: clamped
    normalised = (image - np.array(MEAN)) / np.array(STD)
    got = to_display(torch.from_numpy(normalised.transpose(2, 0, 1)).float(), MEAN, STD)
    np.testing.assert_allclose(got, np.clip(image, 0, 1), atol=1e-6)
    assert got.shape == (6, 5, 3)


def test_overlay_sheets_show_the_image_and_its_mask(tmp_path):
    side, methods, kinds = 40, ("featurenorm", "patchcore"), ("backbone", "pretrained")
    factor = -(-MIN_TILE_SIZE // side)  # 40 px images are upscaled 4x
    rng = np.random.default_rng(1)
    images = rng.random((2, side, side, 3))
    pixel_values = torch.from_numpy(((images - np.array(MEAN)) / np.array(STD)).transpose(0, 3, 1, 2)).float()
    masks = torch.zeros(2, side, side)
    masks[0, 10:20, 12:30] = 1
    maps = {(m, k): torch.rand(2, side, side) for m in methods for k in kinds}
    scores = {(m, k): torch.tensor([0.9, 0.1]) for m in methods for k in kinds}
    ranges = {key: (0.0, 1.0) for key in maps}
    paths = save_overlays(tmp_path, "tile/x", pixel_values, masks, ["tile/test/crack/000", "tile/test/good/001"],
                          scores, maps, ranges, methods, kinds, MEAN, STD)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "overlays/tile_x/00_tile_test_crack_000.png", "overlays/tile_x/01_tile_test_good_001.png"]
    tile = side * factor
    for i, path in enumerate(paths):
        sheet = np.array(Image.open(path).convert("RGB"))
        assert sheet.shape[0] == TITLE_HEIGHT + len(methods) * (TITLE_HEIGHT + tile + TILE_GAP)
        shown = np.round(images[i] * 255).astype(np.uint8)
        expected = np.kron(shown, np.ones((factor, factor, 1), dtype=np.uint8))
        for row in range(len(methods)):
            top = TITLE_HEIGHT + TILE_GAP + row * (TITLE_HEIGHT + tile + TILE_GAP) + TITLE_HEIGHT
            got = sheet[top : top + tile, :tile]
            same = (got == expected).all(axis=-1)
            if i == 1:
                assert same.all()  # a normal image: no contour, the input tile is the image itself
            else:  # only pixels on the (upscaled) mask's outline differ
                assert not same.all()
                differ = np.argwhere(~same)
                assert differ[:, 0].min() >= 10 * factor - 1 and differ[:, 0].max() <= 20 * factor
                assert differ[:, 1].min() >= 12 * factor - 1 and differ[:, 1].max() <= 30 * factor


def test_comparison_chart_bars_are_the_mean_metrics_in_percent(tmp_path, monkeypatch):
    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), real(fig, *a, **k))[1])
    results = {
        "featurenorm": {"backbone": {"image_auroc": 0.5, "pixel_auroc": 0.6, "aupro": None},
                        "pretrained": {"image_auroc": 0.7, "pixel_auroc": 0.8, "aupro": 0.3, "image_auroc_std": 0.05}},
        "patchcore": {"pretrained": {"image_auroc": 0.9, "pixel_auroc": 0.95, "aupro": 0.85}},
    }
    methods, kinds = ("featurenorm", "patchcore"), ("backbone", "pretrained")
    path = save_comparison_chart(tmp_path / "chart.png", results, methods, kinds, title="mean")
    assert path == tmp_path / "chart.png" and Image.open(path).size[0] > Image.open(path).size[1]
    (fig,) = saved
    for ax, metric in zip(fig.axes, plots.METRICS):
        heights = [bar.get_height() for bar in ax.patches]
        expected = [100 * results.get(m, {}).get(k, {}).get(metric) if results.get(m, {}).get(k, {}).get(metric)
                    is not None else np.nan for k in kinds for m in methods]
        np.testing.assert_allclose(heights, expected, equal_nan=True)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["w/o", "w/"]
    assert fig.texts[0].get_text() == "mean"
