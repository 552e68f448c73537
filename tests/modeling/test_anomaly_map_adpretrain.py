"""Patch scores -> pixel maps: the blur against scipy, the layout against index loops."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from adpretrain_hf.modeling.anomaly_map_adpretrain import (
    GAUSSIAN_SIGMA,
    anomaly_map_from_grids,
    feature_norm_grids,
    gaussian_blur2d,
    gaussian_kernel1d,
    tokens_to_grid,
    upsample_and_average,
)


@pytest.mark.parametrize("sigma", [0.7, 2.0, GAUSSIAN_SIGMA])
def test_kernel_is_scipys_impulse_response(sigma):
    kernel = gaussian_kernel1d(sigma, dtype=torch.float64).numpy()
    radius = kernel.size // 2
    impulse = np.zeros(4 * radius + 1)
    impulse[2 * radius] = 1.0  # far from the edges: the response is the kernel itself
    response = gaussian_filter1d(impulse, sigma, mode="constant")
    np.testing.assert_allclose(kernel, response[radius : 3 * radius + 1], atol=1e-12)
    assert response[: radius].max() == response[3 * radius + 1 :].max() == 0.0  # same radius as scipy


@pytest.mark.parametrize("shape", [(2, 30, 40), (1, 5, 7)])  # 5x7: the kernel is wider than the map
def test_blur_matches_scipy_gaussian_filter(shape):
    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    blurred = gaussian_blur2d(maps, GAUSSIAN_SIGMA)
    for n in range(shape[0]):
        expected = gaussian_filter(maps[n].numpy(), GAUSSIAN_SIGMA, mode="reflect")
        np.testing.assert_allclose(blurred[n].numpy(), expected, atol=1e-10)
    assert gaussian_blur2d(maps, 0.0) is maps


def test_upsample_and_average_and_image_scores():
    fine, coarse = torch.rand(2, 4, 4), torch.full((2, 2, 2), 3.0)
    averaged = upsample_and_average([fine, coarse], (4, 4))
    torch.testing.assert_close(averaged, (fine + 3.0) / 2)  # same size: identity; constant: stays constant
    maps, scores = anomaly_map_from_grids([fine, coarse], (8, 8), sigma=1.0)
    assert maps.shape == (2, 8, 8)
    torch.testing.assert_close(scores, torch.tensor([maps[0].max(), maps[1].max()]))


def test_tokens_to_grid_and_feature_norms_against_loops():
    tokens = torch.randn(2, 6, 5)
    grid = tokens_to_grid(tokens, (2, 3))
    norms = feature_norm_grids([tokens], [(2, 3)])[0]
    for b in range(2):
        for i in range(2):
            for j in range(3):
                assert torch.equal(grid[b, :, i, j], tokens[b, i * 3 + j])
                assert norms[b, i, j] == pytest.approx(float(np.linalg.norm(tokens[b, i * 3 + j].numpy())), rel=1e-5)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="5 tokens do not fill a 2x3 grid"):
        tokens_to_grid(torch.randn(1, 5, 4), (2, 3))
    with pytest.raises(ValueError, match=r"tokens of shape \[B, h\*w, C\].*got \(6, 4\)"):
        tokens_to_grid(torch.randn(6, 4), (2, 3))
    with pytest.raises(ValueError, match=r"shape \[N, H, W\], got \(4, 4\)"):
        gaussian_blur2d(torch.rand(4, 4))
    with pytest.raises(ValueError, match="at least one layer"):
        upsample_and_average([], (4, 4))
    with pytest.raises(ValueError, match=r"score grid 1 has shape \(4, 4\).*\[N, h, w\]"):
        upsample_and_average([torch.rand(1, 2, 2), torch.rand(4, 4)], (4, 4))
