"""File plumbing shared by ``adpretrain fit`` and ``adpretrain predict`` (no torch at import).

- image discovery: a folder (recursive) or a glob, sorted, with the root the outputs mirror;
- output names: ``sub/a.png`` -> ``sub/a_png``, so ``a.png``/``a.jpg`` and equal names in
  different sub-folders never clash (the last ``_`` separates the suffix: the map is injective);
- a validation folder: normal images only, or MVTec-style ``good/`` + defect sub-folders with
  masks at ``ground_truth/<defect>/<stem>_mask.png`` (inside the folder or beside it);
- ``--device`` (``auto`` and a check against the machine).
"""

from __future__ import annotations

import argparse
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
NORMAL_FOLDER = "good"
MASK_FOLDER = "ground_truth"
MASK_SUFFIX = "_mask"
GLOB_CHARACTERS = "*?["


def _error(message: str, hint: str) -> Exception:
    from adpretrain_hf.cli import CommandError

    return CommandError(message, hint)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def find_images(spec: str, option: str, skip: tuple[str, ...] = ()) -> tuple[Path, list[Path]]:
    """``(root, images)`` of a folder (searched recursively) or a glob pattern (``**`` allowed).

    ``root`` is the folder, or for a glob the deepest folder holding every match; sub-folders
    named in ``skip`` (e.g. ``ground_truth``) are left out of a folder search.
    """
    if any(ch in spec for ch in GLOB_CHARACTERS):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if _is_image(Path(p)))
        if not files:
            raise _error(f"no images match {spec!r}", f"check the pattern given to --{option} (quote it so the shell does not expand it)")
        root = Path(os.path.commonpath([str(p.parent) for p in files]))
        return root, files
    root = Path(spec)
    if not root.is_dir():
        raise _error(f"--{option} {spec} is neither a folder nor a glob pattern", f"pass a folder of images or a quoted pattern like 'dir/**/*.png' to --{option}")
    files = sorted(p for p in root.rglob("*") if _is_image(p) and not set(p.relative_to(root).parts[:-1]) & set(skip))
    if not files:
        raise _error(f"no images under {spec}", f"put {', '.join(IMAGE_SUFFIXES)} files there (sub-folders are searched)")
    return root, files


def output_stem(path: Path, root: Path) -> Path:
    """``root/sub/a.png`` -> ``sub/a_png``: unique per input file, safe as a relative output path."""
    relative = path.relative_to(root)
    suffix = relative.suffix.lower().lstrip(".")
    return relative.with_name(f"{relative.stem}_{suffix}" if suffix else relative.stem)


def output_file(path: Path, root: Path, extension: str) -> Path:
    """:func:`output_stem` plus ``extension`` (e.g. ``".npy"``). Appended, never ``with_suffix``:
    a stem that keeps dots (``x.v1_png``) would lose its last part and collide with ``x.v2_png``."""
    stem = output_stem(path, root)
    return stem.with_name(stem.name + extension)


@dataclass
class ValidationSet:
    """Calibration images and, for a labelled folder, labels (0/1) and masks (paths or None)."""

    images: list[Path]
    labels: Optional[list[int]] = None
    masks: Optional[list[Optional[Path]]] = None
    defects: list[str] = field(default_factory=list)
    missing_masks: int = 0


def _mask_for(val_root: Path, defect: str, image: Path) -> Optional[Path]:
    relative = image.relative_to(val_root / defect)
    for base in (val_root / MASK_FOLDER, val_root.parent / MASK_FOLDER):
        for suffix in (".png", image.suffix):
            candidate = base / defect / relative.parent / f"{relative.stem}{MASK_SUFFIX}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def load_validation_set(spec: str) -> ValidationSet:
    """Read ``--val``: a ``good/`` sub-folder makes it labelled (every other sub-folder is a defect)."""
    root = Path(spec)
    if not (root / NORMAL_FOLDER).is_dir():
        _, images = find_images(spec, "val", skip=(MASK_FOLDER,))
        return ValidationSet(images=images)
    _, normal = find_images(str(root / NORMAL_FOLDER), "val")
    images, labels, masks = list(normal), [0] * len(normal), [None] * len(normal)
    defects = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in (NORMAL_FOLDER, MASK_FOLDER))
    missing = 0
    for defect in defects:
        _, found = find_images(str(root / defect), "val")
        for image in found:
            mask = _mask_for(root, defect, image)
            missing += mask is None
            images.append(image)
            labels.append(1)
            masks.append(mask)
    return ValidationSet(images=images, labels=labels, masks=masks if not missing else None, defects=defects, missing_masks=missing)


def resolve_device(name: str) -> str:
    """``--device`` (argparse type, one for every command): ``auto`` -> ``cuda`` when a GPU is visible, else
    ``cpu``; any other name is checked against this machine, so a bad one exits 2 before any model loads."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise argparse.ArgumentTypeError(f"{name!r}: this machine has {count} visible CUDA device(s); use auto or cpu")
    return name
