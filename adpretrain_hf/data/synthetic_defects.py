"""Synthetic defects drawn onto a :class:`~.synthetic_scenes.Scene`, each with its pixel mask.

A defect is an *opacity* map ``alpha [H, W]`` in [0, 1] and a *target* image
``[H, W, 3]``; the defective image is ``image * (1 - alpha) + target * alpha``, restricted
to the product's foreground. The mask is exactly ``alpha > 0``, so every pixel the defect
changed is in the mask and nothing else is (opacities below :data:`ALPHA_MIN` are dropped
so that a masked pixel visibly changes).

Kinds (:data:`DEFECT_KINDS`): thin scratches (random polylines), cracks (branching random
walks), holes (dark ellipses with a bright rim), stains (blurred colour blobs) and missing
parts (a chunk of the product showing the background).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .synthetic_scenes import Scene, rotated_grid

ALPHA_MIN = 0.08  # opacities below this are dropped: the change would be invisible
MIN_DEFECT_PIXELS = 6  # a defect smaller than this after clipping to the product is redrawn
MAX_PLACEMENT_ATTEMPTS = 20

SCRATCH_SEGMENTS = (3, 6)  # polyline vertices, low inclusive, high exclusive
SCRATCH_STEP = (0.06, 0.12)  # segment length, fraction of the image side
SCRATCH_TURN = 0.5  # max change of direction per segment, radians
CRACK_STEPS = 0.3  # random-walk steps per image side
CRACK_TURN_STD = 0.35
CRACK_BRANCH_PROB = 0.06
CRACK_MAX_BRANCHES = 3
HOLE_RADIUS = (0.035, 0.07)
HOLE_RIM = 0.35  # rim width relative to the hole's radius
STAIN_RADIUS = (0.05, 0.11)
STAIN_BLUR = 0.02  # blur sigma, fraction of the image side
STAIN_OPACITY = (0.55, 0.85)
STAIN_COLOURS: tuple[tuple[float, float, float], ...] = ((120, 80, 30), (200, 180, 60), (60, 40, 30), (150, 40, 40))
MISSING_RADIUS = (0.08, 0.15)
DARKEN, LIGHTEN = 0.3, 0.6  # how far a scratch pulls a pixel towards black / white


def _anchor(rng: np.random.Generator, foreground: np.ndarray) -> tuple[float, float]:
    """A random product pixel ``(x, y)`` to start a defect at."""
    ys, xs = np.nonzero(foreground)
    i = rng.integers(len(ys))
    return float(xs[i]), float(ys[i])


def _line_width(size: int) -> int:
    return max(1, round(size / 128))


def _draw_lines(size: int, paths: list[list[tuple[float, float]]], width: int) -> np.ndarray:
    """Rasterise polylines into a ``[H, W]`` float alpha of 0/1."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for path in paths:
        if len(path) > 1:
            draw.line(path, fill=255, width=width, joint="curve")
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _contrasting(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Darker on a light surface, lighter on a dark one, so a line shows on any product."""
    covered = alpha > 0
    mean = float(image[covered].mean()) if covered.any() else 0.0
    return image * DARKEN if mean > 110 else image + (255.0 - image) * LIGHTEN


def scratch(rng: np.random.Generator, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    size = scene.image.shape[0]
    x, y = _anchor(rng, scene.foreground)
    heading = rng.uniform(0, 2 * np.pi)
    path = [(x, y)]
    for _ in range(rng.integers(*SCRATCH_SEGMENTS)):
        heading += rng.uniform(-SCRATCH_TURN, SCRATCH_TURN)
        step = rng.uniform(*SCRATCH_STEP) * size
        x, y = x + step * np.cos(heading), y + step * np.sin(heading)
        path.append((x, y))
    alpha = _draw_lines(size, [path], _line_width(size))
    return alpha, _contrasting(scene.image, alpha)


def crack(rng: np.random.Generator, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    size = scene.image.shape[0]
    walkers = [(*_anchor(rng, scene.foreground), rng.uniform(0, 2 * np.pi))]
    paths, branches = [], 0
    while walkers:
        x, y, heading = walkers.pop()
        path = [(x, y)]
        for _ in range(int(CRACK_STEPS * size / 2)):
            heading += rng.normal(0.0, CRACK_TURN_STD)
            x, y = x + 2.0 * np.cos(heading), y + 2.0 * np.sin(heading)
            path.append((x, y))
            if branches < CRACK_MAX_BRANCHES and rng.random() < CRACK_BRANCH_PROB:
                branches += 1
                walkers.append((x, y, heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0)))
        paths.append(path)
    alpha = _draw_lines(size, paths, _line_width(size))
    return alpha, scene.image * 0.15


def _random_ellipse(
    rng: np.random.Generator, scene: Scene, radius: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """An ellipse anchored on the product: its frame ``(u, v)`` and semi-axes ``(a, b)`` in pixels."""
    size = scene.image.shape[0]
    x, y = _anchor(rng, scene.foreground)
    a, b = rng.uniform(*radius, 2) * size
    u, v = rotated_grid(size, x, y, rng.uniform(0, np.pi))
    return u, v, float(a), float(b)


def hole(rng: np.random.Generator, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    u, v, a, b = _random_ellipse(rng, scene, HOLE_RADIUS)
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    rim = HOLE_RIM * min(a, b) + 1.0
    with_rim = (u / (a + rim)) ** 2 + (v / (b + rim)) ** 2 <= 1.0
    target = np.where(inside[..., None], 18.0, scene.image + (255.0 - scene.image) * 0.5)
    return with_rim.astype(np.float32), target.astype(np.float32)


def stain(rng: np.random.Generator, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    size = scene.image.shape[0]
    x, y = _anchor(rng, scene.foreground)
    blob = np.zeros((size, size), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(rng.integers(2, 5)):
        radius = rng.uniform(*STAIN_RADIUS) * size
        ox, oy = rng.normal(0.0, radius / 2, 2)
        blob = np.maximum(blob, ((xx - x - ox) ** 2 + (yy - y - oy) ** 2 <= radius**2).astype(np.float32))
    soft = ndimage.gaussian_filter(blob, STAIN_BLUR * size)
    alpha = np.clip((soft - 0.15) / 0.6, 0.0, 1.0) * rng.uniform(*STAIN_OPACITY)
    colour = np.asarray(STAIN_COLOURS[rng.integers(len(STAIN_COLOURS))], np.float32) + rng.normal(0, 10, 3)
    return alpha.astype(np.float32), np.broadcast_to(colour.astype(np.float32), scene.image.shape)


def missing_part(rng: np.random.Generator, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    u, v, a, b = _random_ellipse(rng, scene, MISSING_RADIUS)
    chunk = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return chunk.astype(np.float32), scene.background


DefectPainter = Callable[[np.random.Generator, Scene], tuple[np.ndarray, np.ndarray]]

DEFECTS: dict[str, DefectPainter] = {
    "scratch": scratch,
    "crack": crack,
    "hole": hole,
    "stain": stain,
    "missing_part": missing_part,
}
DEFECT_KINDS: tuple[str, ...] = tuple(DEFECTS)


def apply_defect(rng: np.random.Generator, scene: Scene, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind`` on ``scene``.

    Returns:
        ``(image [H, W, 3] float32, mask [H, W] bool)``; outside ``mask`` the image equals
        ``scene.image`` exactly.
    """
    if kind not in DEFECTS:
        raise ValueError(f"unknown defect kind {kind!r}: choose from {list(DEFECT_KINDS)}")
    for _ in range(MAX_PLACEMENT_ATTEMPTS):
        alpha, target = DEFECTS[kind](rng, scene)
        alpha = np.where(scene.foreground & (alpha >= ALPHA_MIN), alpha, 0.0).astype(np.float32)
        if np.count_nonzero(alpha) >= MIN_DEFECT_PIXELS:
            break
    else:  # pragma: no cover - every product covers far more than a few pixels
        raise RuntimeError(f"could not place a {kind} on the product after {MAX_PLACEMENT_ATTEMPTS} attempts")
    weight = alpha[..., None]
    return scene.image * (1.0 - weight) + target * weight, alpha > 0
