"""Synthetic anomaly-detection datasets in the Real-IAD or MVTec AD folder layout.

Tests, demos and the non-aligned experiments (issue 8) need data with pixel masks that
can be made offline in seconds and reproduced byte for byte. Products come from
:mod:`.synthetic_scenes` (textures and objects), defects from :mod:`.synthetic_defects`.

Real-IAD layout (file names exactly as the real dataset's)::

    <class>/OK/S0001/<class>_0001_OK_C1.jpg
    <class>/NG/<defect>/S0009/<class>_0009_NG_C1.jpg + <class>_0009_NG_C1.png (mask, 0/255)

Each sample is seen by ``num_views`` cameras C1, C2, ...: every view shifts the product a
few pixels, changes the exposure and has its own sensor noise. An NG sample's defect is
always visible in C1 and in each other view with probability
:data:`VIEW_DEFECT_VISIBLE_PROB`; a view where it is not visible gets no mask (and so reads
as normal, as in Real-IAD). Sample numbers are unique per class (OK first, then NG).

MVTec AD layout: ``<cat>/train/good/000.png``, ``<cat>/test/{good,<defect>}/000.png``,
``<cat>/ground_truth/<defect>/000_mask.png``.

Every image draws from its own generator seeded by ``(seed, category index, role, index)``,
so a category's files do not depend on which other categories are generated.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .schema import GOOD_DEFECT, VIEW_NAMES
from .synthetic_defects import DEFECT_KINDS, apply_defect
from .synthetic_scenes import OBJECT_CATEGORIES, SCENES, TEXTURE_CATEGORIES

SYNTHETIC_CATEGORIES: tuple[str, ...] = tuple(SCENES)
SYNTHETIC_LAYOUTS: tuple[str, ...] = ("realiad", "mvtec")
__all__ = [
    "DEFECT_KINDS",
    "OBJECT_CATEGORIES",
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_LAYOUTS",
    "TEXTURE_CATEGORIES",
    "GeneratedDataset",
    "SyntheticSample",
    "generate_dataset",
    "render_views",
]

DEFAULT_NUM_NORMAL = 8
DEFAULT_NUM_ANOMALOUS = 4
DEFAULT_IMAGE_SIZE = 128
DEFAULT_NUM_VIEWS = 2
MIN_IMAGE_SIZE = 32
SENSOR_NOISE_STD = 2.0  # grey levels, drawn anew for every view
# Per-view camera differences: (rows, columns) shift in pixels at 128 px (scaled with the
# size; np.roll, so the product wraps around rather than leaving the frame), and gain.
VIEW_SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (3, -2), (-2, 3), (2, 2), (-3, -1))
VIEW_GAINS: tuple[float, ...] = (1.0, 0.93, 1.06, 0.97, 1.03)
VIEW_DEFECT_VISIBLE_PROB = 0.5
REFERENCE_SIZE = 128  # the size VIEW_SHIFTS are given at
JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 1  # noisy images barely compress: favour speed
MASK_ON = 255  # defective pixels in written masks
_ROLE_TRAIN, _ROLE_TEST_NORMAL, _ROLE_ANOMALOUS = 0, 1, 2


@dataclass
class SyntheticSample:
    """One rendered view.

    Attributes:
        image: ``[H, W, 3]`` uint8.
        mask: ``[H, W]`` bool, ``None`` where no defect is visible.
        clean: ``[H, W, 3]`` uint8, the same view without the defect (same pose and
            noise); equal to ``image`` outside ``mask``.
        defect: the defect kind, ``"good"`` for a normal sample.
    """

    image: np.ndarray
    mask: np.ndarray | None
    clean: np.ndarray
    defect: str


@dataclass(frozen=True)
class GeneratedDataset:
    """What :func:`generate_dataset` wrote."""

    root: Path
    layout: str
    categories: tuple[str, ...]
    num_images: int
    num_masks: int


def _check_category(category: str) -> None:
    if category not in SCENES:
        raise ValueError(f"unknown synthetic category {category!r}: choose from {list(SYNTHETIC_CATEGORIES)}")


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _view_shift(view: int, size: int) -> tuple[int, int]:
    """Camera ``view``'s (rows, columns) shift of the product at image side ``size``."""
    rows, cols = VIEW_SHIFTS[view]
    return round(rows * size / REFERENCE_SIZE), round(cols * size / REFERENCE_SIZE)


def _view(image: np.ndarray, view: int, noise: np.ndarray) -> np.ndarray:
    """How camera ``view`` sees ``image``: shifted, re-exposed, noisy, quantised to uint8."""
    seen = np.roll(image, _view_shift(view, image.shape[0]), axis=(0, 1)) * VIEW_GAINS[view] + noise
    return np.clip(np.rint(seen), 0, 255).astype(np.uint8)


def render_views(
    category: str,
    defect: str | None = None,
    *,
    seed: int | Sequence[int] = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    aligned: bool = True,
    num_views: int = 1,
) -> list[SyntheticSample]:
    """Render one sample of ``category`` (with a ``defect`` of :data:`DEFECT_KINDS`, or normal).

    Returns ``num_views`` views C1, C2, ...; the defect is visible in the first view and in
    each further one with probability :data:`VIEW_DEFECT_VISIBLE_PROB`.
    """
    _check_category(category)
    _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    _check_int("num_views", num_views, 1, len(VIEW_NAMES))
    if defect == GOOD_DEFECT:
        defect = None
    if defect is not None and defect not in DEFECT_KINDS:
        raise ValueError(f"unknown defect kind {defect!r}: choose from {list(DEFECT_KINDS)} (or None for normal)")
    rng = np.random.default_rng(seed)
    scene = SCENES[category](rng, image_size, aligned)
    defective, mask = (scene.image, None) if defect is None else apply_defect(rng, scene, defect)
    samples = []
    for view in range(num_views):
        visible = mask is not None and (view == 0 or rng.random() < VIEW_DEFECT_VISIBLE_PROB)
        noise = rng.normal(0.0, SENSOR_NOISE_STD, scene.image.shape)
        clean = _view(scene.image, view, noise)
        if visible:
            moved = np.roll(mask, _view_shift(view, image_size), axis=(0, 1))
            samples.append(SyntheticSample(_view(defective, view, noise), moved, clean, defect))
        else:
            samples.append(SyntheticSample(clean, None, clean, defect or GOOD_DEFECT))
    return samples


def _save_image(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(array, "RGB").save(path, quality=JPEG_QUALITY)
    else:
        Image.fromarray(array, "RGB").save(path, compress_level=PNG_COMPRESS_LEVEL)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * MASK_ON, "L").save(path, compress_level=PNG_COMPRESS_LEVEL)


@dataclass(frozen=True)
class _Job:
    category: str
    role: int
    index: int  # within the role (seeds the generator, numbers Real-IAD samples)
    defect: str | None
    number: int  # within the MVTec folder: the index among images of the same defect kind


def _jobs(categories: Sequence[str], num_normal: int, num_test_normal: int, num_anomalous: int,
          defects: Sequence[str]) -> list[_Job]:
    jobs = []
    for category in categories:
        jobs += [_Job(category, _ROLE_TRAIN, i, None, i) for i in range(num_normal)]
        jobs += [_Job(category, _ROLE_TEST_NORMAL, i, None, i) for i in range(num_test_normal)]
        # defect kinds are cycled, so anomaly i is number i // len(defects) of its kind
        jobs += [
            _Job(category, _ROLE_ANOMALOUS, i, defects[i % len(defects)], i // len(defects))
            for i in range(num_anomalous)
        ]
    return jobs


def _realiad_paths(job: _Job, num_normal: int, view: int) -> tuple[str, str]:
    """``(image, mask)`` paths of one Real-IAD view, relative to the root; OK samples first."""
    number = job.index + 1 if job.role == _ROLE_TRAIN else num_normal + job.index + 1
    kind = "OK" if job.defect is None else "NG"
    folder = f"{job.category}/OK" if job.defect is None else f"{job.category}/NG/{job.defect}"
    stem = f"{folder}/S{number:04d}/{job.category}_{number:04d}_{kind}_{VIEW_NAMES[view]}"
    return f"{stem}.jpg", f"{stem}.png"


def _mvtec_paths(job: _Job) -> tuple[str, str]:
    """``(image, mask)`` paths of one MVTec-layout image, relative to the root."""
    if job.defect is None:
        split = "train" if job.role == _ROLE_TRAIN else "test"
        return f"{job.category}/{split}/{GOOD_DEFECT}/{job.number:03d}.png", ""
    return (
        f"{job.category}/test/{job.defect}/{job.number:03d}.png",
        f"{job.category}/ground_truth/{job.defect}/{job.number:03d}_mask.png",
    )


def _prepare(out: Path, categories: Sequence[str], overwrite: bool) -> None:
    for category in categories:
        folder = out / category
        if folder.is_dir() and any(folder.iterdir()):
            if not overwrite:
                raise ValueError(
                    f"{str(folder)!r} already holds files: pass overwrite=True (--overwrite) to replace "
                    "them, or write to a new folder"
                )
            shutil.rmtree(folder)
    out.mkdir(parents=True, exist_ok=True)


def generate_dataset(
    out_dir: str | os.PathLike,
    layout: str = "realiad",
    categories: str | Iterable[str] | None = None,
    num_normal: int = DEFAULT_NUM_NORMAL,
    num_anomalous: int = DEFAULT_NUM_ANOMALOUS,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    *,
    aligned: bool = True,
    num_views: int = DEFAULT_NUM_VIEWS,
    num_test_normal: int | None = None,
    defects: Iterable[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> GeneratedDataset:
    """Write a synthetic dataset to ``out_dir`` in the ``"realiad"`` or ``"mvtec"`` layout.

    Args:
        out_dir: destination folder (created if needed).
        layout: ``"realiad"`` or ``"mvtec"``.
        categories: names from :data:`SYNTHETIC_CATEGORIES` (default: all).
        num_normal: normal samples per category (Real-IAD: OK samples; MVTec: training images).
        num_anomalous: anomalous samples per category; defect kinds are cycled through.
        image_size: side of the square images, pixels.
        seed: the same seed writes byte-identical files.
        aligned: tight object pose (True) or free position and rotation (False).
        num_views: camera views per Real-IAD sample (1-5); ignored by the MVTec layout.
        num_test_normal: MVTec layout only: normal test images (default ``num_anomalous``).
        defects: the defect kinds to use (default: all of :data:`DEFECT_KINDS`).
        overwrite: replace category folders that already hold files.
        progress: show a progress bar.
    """
    if layout not in SYNTHETIC_LAYOUTS:
        raise ValueError(f"unknown synthetic layout {layout!r}: choose from {list(SYNTHETIC_LAYOUTS)}")
    names = list(SYNTHETIC_CATEGORIES) if categories is None else (
        [categories] if isinstance(categories, str) else list(categories))
    if not names:
        raise ValueError(f"categories is empty: pass names from {list(SYNTHETIC_CATEGORIES)} or None for all")
    for name in names:
        _check_category(name)
    kinds = list(DEFECT_KINDS) if defects is None else list(defects)
    unknown = [kind for kind in kinds if kind not in DEFECT_KINDS]
    if unknown or not kinds:
        raise ValueError(f"defects must be a non-empty list from {list(DEFECT_KINDS)}, got {kinds}")
    num_normal = _check_int("num_normal", num_normal, 1)
    num_anomalous = _check_int("num_anomalous", num_anomalous, 0)
    test_normal = num_anomalous if num_test_normal is None else _check_int("num_test_normal", num_test_normal, 0)
    if layout == "realiad":
        test_normal = 0  # Real-IAD has no split: realiad_eval_split() makes one
    _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    views = _check_int("num_views", num_views, 1, len(VIEW_NAMES)) if layout == "realiad" else 1
    _check_int("seed", seed, 0)
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a folder path, got {type(out_dir).__name__}")
    out = Path(out_dir)
    _prepare(out, names, overwrite)

    num_images = num_masks = 0
    for job in tqdm(_jobs(names, num_normal, test_normal, num_anomalous, kinds), desc="synthetic images",
                    unit="sample", disable=not progress):
        job_seed = [seed, SYNTHETIC_CATEGORIES.index(job.category), job.role, job.index]
        rendered = render_views(job.category, job.defect, seed=job_seed, image_size=image_size,
                                aligned=aligned, num_views=views)
        for view, sample in enumerate(rendered):
            image_path, mask_path = _realiad_paths(job, num_normal, view) if layout == "realiad" else _mvtec_paths(job)
            _save_image(sample.image, out / image_path)
            num_images += 1
            if sample.mask is not None:
                _save_mask(sample.mask, out / mask_path)
                num_masks += 1
    return GeneratedDataset(out, layout, tuple(names), num_images, num_masks)
