"""Fast overlays: colours against an independent lookup, contour pixels, sizes, errors."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image
from scipy import ndimage

from adpretrain_hf.overlays import COLORBAR_PANEL_WIDTH, render_overlay

H, W = 24, 32


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    heat = rng.normal(size=(H, W)).astype(np.float32)
    return image, heat


def _expected_colours(heat: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Matplotlib's own 256-entry jet table, indexed independently (per pixel, in Python)."""
    table = (colormaps["jet"].resampled(256)(np.arange(256))[:, :3] * 255)
    out = np.zeros(heat.shape + (3,))
    for (r, c), value in np.ndenumerate(heat):
        t = min(max((float(value) - vmin) / (vmax - vmin), 0.0), 1.0)
        out[r, c] = table[int(round(t * 255))]
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_pixel_colours_match_independent_lookup(alpha):
    image, heat = _inputs()
    vmin, vmax = -1.0, 1.5  # some values clip at both ends
    out = np.asarray(render_overlay(image, heat, vmin=vmin, vmax=vmax, colorbar=False, alpha=alpha), dtype=np.float64)
    expected = (1 - alpha) * image + alpha * _expected_colours(heat, vmin, vmax)
    # uint8 rounding of the table and of the blend: at most one grey level apart
    assert np.abs(out - expected).max() <= 1.0


def test_alpha_zero_is_the_image_and_pil_input_accepted():
    image, heat = _inputs(1)
    out = render_overlay(Image.fromarray(image), heat, vmin=float(heat.min()), vmax=float(heat.max()), colorbar=False, alpha=0.0)
    np.testing.assert_array_equal(np.asarray(out), image)


def test_contour_pixels_are_the_mask_boundary():
    image, heat = _inputs(2)
    mask = np.zeros((H, W), dtype=bool)
    mask[5:15, 8:20] = True
    mask[10:24, 25:30] = True  # touches the bottom border: no contour drawn along the frame
    plain = np.asarray(render_overlay(image, heat, vmin=-2, vmax=2, colorbar=False))
    drawn = np.asarray(render_overlay(image, heat, vmin=-2, vmax=2, pred_mask=mask, colorbar=False))
    # independent boundary: mask minus its binary erosion (4-neighbourhood), border counted as inside
    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=1)
    boundary = mask & ~inner
    assert boundary.sum() > 0 and not boundary[-1, 26:29].any()
    assert (drawn[boundary] == 255).all()
    np.testing.assert_array_equal(drawn[~boundary], plain[~boundary])


def test_output_size_and_colorbar():
    image, heat = _inputs(3)
    out = render_overlay(image, heat, vmin=0.0, vmax=1.0)
    assert out.size == (W + COLORBAR_PANEL_WIDTH, H) and out.mode == "RGB"
    bar = np.asarray(out)[:, W:]
    top, bottom = bar[0], bar[-1]
    # the strip's top row is the table's last entry (dark red), its bottom row the first (dark blue)
    assert any(tuple(p) == (128, 0, 0) for p in top) and any(tuple(p) == (0, 0, 128) for p in bottom)


def test_bad_inputs_raise_one_line_errors():
    image, heat = _inputs(4)
    with pytest.raises(ValueError, match="does not match"):
        render_overlay(image, heat[:-1], vmin=0, vmax=1)
    with pytest.raises(ValueError, match="not a range"):
        render_overlay(image, heat, vmin=1, vmax=0)
    with pytest.raises(ValueError, match="alpha"):
        render_overlay(image, heat, vmin=0, vmax=1, alpha=2)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        render_overlay(image[..., 0], heat, vmin=0, vmax=1)
