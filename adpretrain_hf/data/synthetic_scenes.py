"""Defect-free synthetic products: three textures and three objects, numpy only.

Each renderer draws one normal image from a random generator and returns a
:class:`Scene`: the image, the *background* that lies under the product (what a missing
part uncovers) and the *foreground* where defects may be drawn. Textures fill the frame
(the background is a dark backing); objects sit on a conveyor-grey background with a pose
(position and rotation) drawn tightly (``aligned=True``, like MVTec AD) or loosely
(``aligned=False``, like VisA's multi-pose categories). Every object has a feature that
breaks its rotational symmetry, so the rotation is visible.

All arrays are float32 in [0, 255] (clipped later); shapes are ``[H, W, 3]`` and ``[H, W]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

# Pose jitter: fraction of the image size the centre may move, and degrees of rotation.
ALIGNED_POSITION_JITTER = 0.02
ALIGNED_ROTATION_JITTER_DEG = 3.0
UNALIGNED_POSITION_JITTER = 0.15
UNALIGNED_ROTATION_JITTER_DEG = 180.0
COLOUR_JITTER_STD = 6.0  # per-sample shift of the base colour, grey levels
SMOOTH_NOISE_COARSEN = 3.0  # blur on a grid this many times coarser per unit of sigma

# Sizes below are fractions of the image side so a category looks the same at any size.
FABRIC_WEAVE_PERIOD = 1 / 16
WOOD_RING_PERIOD = 1 / 9
WOOD_WARP_SIGMA = 1 / 12
TILE_CELL = 1 / 4
TILE_GROUT = 1 / 48
BOTTLE_RADIUS = 0.33
SCREW_LENGTH, SCREW_SHAFT_HALF_WIDTH, SCREW_HEAD_HALF_WIDTH, SCREW_HEAD_LENGTH = 0.68, 0.06, 0.12, 0.14
SCREW_THREAD_PERIOD = 0.035
WASHER_OUTER, WASHER_INNER, WASHER_TAB = 0.32, 0.14, 0.07


@dataclass
class Scene:
    """A normal product image and what defects need to know about it.

    Attributes:
        image: ``[H, W, 3]`` the normal image.
        background: ``[H, W, 3]`` what a missing part uncovers.
        foreground: ``[H, W]`` bool, the product's pixels (defects stay inside).
    """

    image: np.ndarray
    background: np.ndarray
    foreground: np.ndarray


def _colour(rng: np.random.Generator, base: tuple[float, float, float], tint: bool = True) -> np.ndarray:
    """``base`` shifted per channel (``tint``) or in brightness only, by :data:`COLOUR_JITTER_STD`."""
    shift = rng.normal(0.0, COLOUR_JITTER_STD, 3 if tint else 1)
    return (np.asarray(base, np.float32) + shift).astype(np.float32)


def rotated_grid(size: int, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates ``(u, v)`` in a frame centred at ``(cx, cy)`` and rotated by ``angle`` (radians)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * dx + sin * dy, -sin * dx + cos * dy


def _pose(rng: np.random.Generator, size: int, aligned: bool) -> tuple[float, float, float]:
    """Centre ``(cx, cy)`` in pixels and rotation in radians."""
    position = ALIGNED_POSITION_JITTER if aligned else UNALIGNED_POSITION_JITTER
    rotation = ALIGNED_ROTATION_JITTER_DEG if aligned else UNALIGNED_ROTATION_JITTER_DEG
    cx, cy = (size - 1) / 2 + rng.uniform(-position, position, 2) * size
    return float(cx), float(cy), float(np.deg2rad(rng.uniform(-rotation, rotation)))


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float | tuple[float, float]) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation, ``[H, W]``.

    Wide blurs are done on a coarser grid and interpolated back (a blurred field has no
    detail finer than sigma anyway), which keeps a 128 px image at about a millisecond.
    """
    factor = max(1, int(min(np.atleast_1d(sigma)) // SMOOTH_NOISE_COARSEN))
    coarse = -(-size // factor)
    noise = rng.standard_normal((coarse, coarse)).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, np.asarray(sigma, np.float32) / factor, mode="wrap")
    if factor > 1:
        noise = ndimage.zoom(noise, factor, order=1, mode="grid-wrap", grid_mode=True)[:size, :size]
    return noise / (noise.std() + 1e-6)


def _backing(rng: np.random.Generator, size: int, base: tuple[float, float, float]) -> np.ndarray:
    """A dark, slightly mottled backing under a texture."""
    return _colour(rng, base) + 4.0 * _smooth_noise(rng, size, 2.0)[..., None]


def _texture(image: np.ndarray, background: np.ndarray) -> Scene:
    return Scene(image, background, np.ones(image.shape[:2], dtype=bool))


def fabric(rng: np.random.Generator, size: int, aligned: bool) -> Scene:
    """Plain weave: alternating over/under threads plus thread-wise (oriented) noise."""
    angle = _pose(rng, size, aligned)[2]
    period = max(4.0, FABRIC_WEAVE_PERIOD * size)
    u, v = rotated_grid(size, *rng.uniform(0, period, 2), angle)
    over = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    weft = np.sin(np.pi * v / period) ** 2  # shading across a horizontal thread
    warp = np.sin(np.pi * u / period) ** 2
    weave = np.where(over, weft, warp)
    fibres = _smooth_noise(rng, size, (0.6, 3.0))
    shade = 0.62 + 0.38 * weave + 0.05 * fibres
    image = _colour(rng, (80, 100, 150)) * shade[..., None]
    return _texture(image, _backing(rng, size, (25, 25, 32)))


def wood(rng: np.random.Generator, size: int, aligned: bool) -> Scene:
    """Growth rings as warped stripes, with fine fibre noise along the grain."""
    angle = _pose(rng, size, aligned)[2]
    u, _ = rotated_grid(size, 0.0, 0.0, angle)
    period = WOOD_RING_PERIOD * size
    warp = _smooth_noise(rng, size, WOOD_WARP_SIGMA * size) * 0.6 * period
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (u + warp + rng.uniform(0, period)) / period)
    fibres = _smooth_noise(rng, size, (3.0, 0.5) if abs(np.cos(angle)) > 0.7 else (0.5, 3.0))
    light, dark = _colour(rng, (196, 146, 96)), _colour(rng, (138, 88, 48))
    mix = np.clip(rings ** 1.5 + 0.08 * fibres, 0.0, 1.0)[..., None]
    return _texture(light * (1 - mix) + dark * mix, _backing(rng, size, (40, 26, 16)))


def tile(rng: np.random.Generator, size: int, aligned: bool) -> Scene:
    """Square ceramic tiles with grout lines, a per-tile tint and glaze speckle."""
    del aligned  # a stationary texture: the grid phase is random either way
    cell = TILE_CELL * size
    grout = max(1.0, TILE_GROUT * size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + rng.uniform(0, cell, 2)[:, None, None]
    in_grout = ((yy % cell) < grout) | ((xx % cell) < grout)
    cells = int(np.ceil(size / cell)) + 2
    tint = rng.normal(0.0, 0.04, (cells, cells)).astype(np.float32)
    shade = 1.0 + tint[(yy // cell).astype(int), (xx // cell).astype(int)]
    speckle = 0.03 * _smooth_noise(rng, size, 0.7)
    tile_colour = _colour(rng, (205, 200, 190))
    image = np.where(
        in_grout[..., None], _colour(rng, (115, 110, 105)), tile_colour * (shade + speckle)[..., None]
    )
    return _texture(image.astype(np.float32), _backing(rng, size, (30, 30, 30)))


def _conveyor(rng: np.random.Generator, size: int) -> np.ndarray:
    """The background objects lie on: mid grey with soft shading and grain."""
    shading = 6.0 * _smooth_noise(rng, size, size / 6) + 2.5 * _smooth_noise(rng, size, 0.8)
    return _colour(rng, (62, 64, 68), tint=False) + shading[..., None]


def _object(rng: np.random.Generator, size: int, body: np.ndarray, foreground: np.ndarray) -> Scene:
    background = _conveyor(rng, size)
    image = np.where(foreground[..., None], body, background)
    return Scene(image.astype(np.float32), background, foreground)


def bottle(rng: np.random.Generator, size: int, aligned: bool) -> Scene:
    """A bottle seen from above: glass disc, bright lip, dark mouth, an off-centre highlight."""
    cx, cy, angle = _pose(rng, size, aligned)
    u, v = rotated_grid(size, cx, cy, angle)
    radius = BOTTLE_RADIUS * size
    r = np.hypot(u, v) / radius
    foreground = r <= 1.0
    glass = _colour(rng, (70, 105, 60)) * (0.55 + 0.45 * r)[..., None]
    lip = ((r > 0.28) & (r < 0.38))[..., None]
    body = np.where(lip, _colour(rng, (175, 190, 165)), glass)
    body = np.where((r <= 0.28)[..., None], _colour(rng, (18, 20, 18)), body)
    highlight = np.exp(-(((u - 0.55 * radius) ** 2 + (v + 0.35 * radius) ** 2) / (0.02 * radius**2 * 4)))
    return _object(rng, size, body + 120.0 * highlight[..., None], foreground)


def screw(rng: np.random.Generator, size: int, aligned: bool) -> Scene:
    """A screw lying flat: round-ended head, threaded shaft tapering to a point."""
    cx, cy, angle = _pose(rng, size, aligned)
    u, v = rotated_grid(size, cx, cy, angle)
    half_length = SCREW_LENGTH * size / 2
    head_end = -half_length + SCREW_HEAD_LENGTH * size
    shaft_half = SCREW_SHAFT_HALF_WIDTH * size
    taper = np.clip((half_length - u) / (3 * shaft_half), 0.0, 1.0)  # 1 along the shaft, 0 at the tip
    shaft = (u >= head_end) & (u <= half_length) & (np.abs(v) <= shaft_half * taper)
    head_half = SCREW_HEAD_HALF_WIDTH * size
    head = (u >= -half_length) & (u < head_end) & (np.abs(v) <= head_half)
    foreground = shaft | head
    across = np.clip(np.abs(v) / np.where(head, head_half, shaft_half), 0.0, 1.0)
    metal = 0.55 + 0.45 * (1 - across**2)
    threads = np.where(shaft, 0.8 + 0.2 * np.sign(np.sin(2 * np.pi * (u + 0.5 * v) / (SCREW_THREAD_PERIOD * size))), 1.0)
    slot = head & (np.abs(u - (-half_length + head_end) / 2) < 0.012 * size)
    shade = np.where(slot, 0.3, metal * threads)
    return _object(rng, size, _colour(rng, (178, 178, 184)) * shade[..., None], foreground)


def washer(rng: np.random.Generator, size: int, aligned: bool) -> Scene:
    """A flat ring with a locking tab on its rim, lit from one side."""
    cx, cy, angle = _pose(rng, size, aligned)
    u, v = rotated_grid(size, cx, cy, angle)
    r = np.hypot(u, v)
    outer, inner = WASHER_OUTER * size, WASHER_INNER * size
    tab = (u > 0) & (np.abs(v) <= WASHER_TAB * size) & (r >= inner) & (r <= outer + WASHER_TAB * size)
    foreground = ((r >= inner) & (r <= outer)) | tab
    theta = np.arctan2(v, u)
    metal = 0.7 + 0.2 * np.cos(theta + angle - 0.8) + 0.1 * np.cos(np.pi * (r - inner) / (outer - inner))
    return _object(rng, size, _colour(rng, (160, 162, 170)) * metal[..., None], foreground)


SceneRenderer = Callable[[np.random.Generator, int, bool], Scene]

# Category name -> renderer; textures first, then objects.
SCENES: dict[str, SceneRenderer] = {
    "fabric": fabric,
    "wood": wood,
    "tile": tile,
    "bottle": bottle,
    "screw": screw,
    "washer": washer,
}
TEXTURE_CATEGORIES: tuple[str, ...] = ("fabric", "wood", "tile")
OBJECT_CATEGORIES: tuple[str, ...] = ("bottle", "screw", "washer")
