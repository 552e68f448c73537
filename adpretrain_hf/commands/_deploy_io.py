"""File plumbing shared by the commands that read images (``fit``, ``predict``, ``features``);
light on purpose (no torch at import: these checks are argparse ``type=`` functions, so a bad
path is an argument error before anything heavy loads).

- image inputs: each value of ``--images`` / ``--train`` / ``--references`` is an image file, a
  folder (searched recursively, the same rule in every command) or a quoted glob (``**``
  allowed); several values may be given. A path that does not exist is an error naming it.
- model sources (``--model`` / ``--detector``): a local path must exist; a Hub id is
  ``org/name``. Anything else that does not exist is named as a missing local path, never sent
  to the Hub.
- output names: ``sub/a.png`` -> ``sub/a_png``, so ``a.png``/``a.jpg`` and equal names in
  different sub-folders never clash; names that would still be equal on a case-insensitive file
  system (``a.png`` / ``a.PNG``, ``A.png`` / ``a.png``) get a hash of their input path appended.
- a validation folder: normal images only, or MVTec-style ``good/`` + defect sub-folders with
  masks at ``ground_truth/<defect>/<stem>_mask.png`` (inside the folder or beside it);
- ``--device`` (``auto`` and a check against the machine, in ``run``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import hashlib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, TextIO

from adpretrain_hf.cli import CommandError  # light: argparse only

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
NORMAL_FOLDER = "good"
MASK_FOLDER = "ground_truth"
MASK_SUFFIX = "_mask"
GLOB_CHARACTERS = "*?["
URL_PREFIXES = ("http://", "https://", "hf://", "s3://", "gs://")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
"""``org/name``: the only form read as a Hub id (a bare word or a deeper path is a local path)."""
DEVICE_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
CLASH_HASH_CHARS = 8  # hex digits of the input path's sha1 appended to names that clash case-insensitively


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def images_of(spec: str, skip: Sequence[str] = ()) -> list[Path]:
    """The images one input value names: a file, a folder (recursive) or a glob. Raises
    ``ValueError`` naming the value: it does not exist, is a URL, matches or holds no image."""
    if spec.startswith(URL_PREFIXES):
        raise ValueError(f"{spec} is a URL: download the images and pass the local files or folder")
    if any(ch in spec for ch in GLOB_CHARACTERS) and not os.path.exists(spec):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if _is_image(Path(p)))
        if not files:
            raise ValueError(f"no images match {spec!r} (quote the pattern so the shell does not expand it)")
        return files
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{spec} is not an image file: pass {', '.join(IMAGE_SUFFIXES)} files, a folder or a glob")
        return [path]
    if not path.is_dir():
        raise ValueError(f"{spec} does not exist: pass an image file, a folder of images or a quoted glob")
    files = sorted(p for p in path.rglob("*") if _is_image(p) and not set(p.relative_to(path).parts[:-1]) & set(skip))
    if not files:
        raise ValueError(f"no images under {spec}: put {', '.join(IMAGE_SUFFIXES)} files there (sub-folders are searched)")
    return files


def image_input(spec: str) -> list[Path]:
    """argparse ``type=`` of an image input value (exit 2 with the reason, before any model loads)."""
    try:
        return images_of(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def gather_images(values: Sequence[Sequence[Path]]) -> tuple[Path, list[Path]]:
    """``(root, images)`` of the parsed input values: every image once, in order; ``root`` the
    deepest folder holding them all (output names mirror the paths below it)."""
    images = list(dict.fromkeys(p for files in values for p in files))
    root = Path(os.path.commonpath([str(p.parent.absolute()) for p in images]))
    return root, [p.absolute() for p in images]


def find_images(spec: str, option: str, skip: tuple[str, ...] = ()) -> tuple[Path, list[Path]]:
    """``(root, images)`` of one input value (see :func:`images_of`); errors are :class:`CommandError` s."""
    try:
        files = images_of(spec, skip)
    except ValueError as err:
        raise CommandError(f"--{option}: {err}", f"check --{option}") from None
    return gather_images([files])


def model_source(value: str) -> str:
    """argparse ``type=`` of ``--model`` / ``--detector``: an existing local folder, or a Hub id
    ``org/name`` that is not a local path. A mistyped local path is named, never looked up on the Hub."""
    if os.path.isdir(value):
        if not os.path.isfile(os.path.join(value, "config.json")):
            raise argparse.ArgumentTypeError(f"{value} holds no config.json: pass a folder written by save_pretrained / adpretrain fit")
        return value
    if os.path.exists(value):
        raise argparse.ArgumentTypeError(f"{value} is a file: pass the folder that holds config.json")
    if HUB_ID.match(value) and ".." not in value and "--" not in value and not value.startswith("."):
        return value
    raise argparse.ArgumentTypeError(f"{value} does not exist (a local path; Hub ids are written org/name)")


RUNTIMES = ("torch", "onnx", "openvino")  # torch + exported_detector.EXPORT_NAMES' keys, copied: --help imports no torch


def exported_runner(detector: str, runtime: str, device: str) -> Any:
    """``--runtime``: None for torch, else the ExportedDetector of the graph exported into the
    ``detector`` folder (a CommandError for a Hub id, a GPU device, a missing or stale graph)."""
    if runtime == "torch":
        return None
    from adpretrain_hf.exported_detector import ExportedDetector, exported_graph_in

    export_command = f"adpretrain export --detector {detector} --format {runtime}"
    if not os.path.isdir(detector):
        raise CommandError(f"--runtime {runtime} needs a local detector folder, not the Hub id {detector}",
                           f"download it (huggingface-cli download {detector} --local-dir DIR), export it, then pass DIR")
    if str(device) not in ("auto", "cpu"):
        raise CommandError(f"--runtime {runtime} runs on the CPU, not --device {device}", "drop --device, or use --runtime torch on the GPU")
    try:
        return ExportedDetector(exported_graph_in(detector, runtime))
    except (FileNotFoundError, ValueError) as err:
        raise CommandError(str(err), export_command) from None


def device_name(name: str) -> str:
    """argparse ``type=`` of ``--device``: the form only (auto, cpu, mps, cuda, cuda:N); :func:`resolve_device` checks the machine."""
    if not DEVICE_NAME.match(name):
        raise argparse.ArgumentTypeError(f"{name!r} is not a device: use auto, cpu, cuda or cuda:N")
    return name


def output_names(images: Sequence[Path], root: Path) -> dict[Path, Path]:
    """Each image -> its output stem below ``root`` (:func:`output_stem`), unique even on a
    case-insensitive file system: stems equal up to case get ``_<hash of the input path>``."""
    stems = {path: output_stem(path, root) for path in images}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem.as_posix().casefold()] = counts.get(stem.as_posix().casefold(), 0) + 1
    for path, stem in stems.items():
        if counts[stem.as_posix().casefold()] > 1:
            digest = hashlib.sha1(path.relative_to(root).as_posix().encode()).hexdigest()[:CLASH_HASH_CHARS]
            stems[path] = stem.with_name(f"{stem.name}_{digest}")
    return stems


def output_stem(path: Path, root: Path) -> Path:
    """``root/sub/a.png`` -> ``sub/a_png``: unique per input file up to case, safe as a relative output path."""
    relative = path.relative_to(root)
    suffix = relative.suffix.lstrip(".")
    return relative.with_name(f"{relative.stem}_{suffix}" if suffix else relative.stem)


def output_path(folder: Path, stem: Path, extension: str) -> Path:
    """``folder`` / an output stem (:func:`output_names`) plus ``extension`` (e.g. ``".npy"``), its folder
    created. Appended, never ``with_suffix``: a stem that keeps dots (``x.v1_png``) would lose its last
    part and collide with ``x.v2_png``."""
    path = folder / stem.with_name(stem.name + extension)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ValidationSet:
    """Calibration images and, for a labelled folder, labels (0/1) and masks (paths or None)."""

    images: list[Path]
    labels: Optional[list[int]] = None
    masks: Optional[list[Optional[Path]]] = None
    defects: list[str] = field(default_factory=list)
    missing_masks: int = 0

    def keep(self, images: Sequence[Path]) -> "ValidationSet":
        """The set without the images not in ``images`` (those that could not be read)."""
        index = [i for i, path in enumerate(self.images) if path in set(images)]
        pick = (lambda values: None if values is None else [values[i] for i in index])
        return ValidationSet(list(images), pick(self.labels), pick(self.masks), self.defects, self.missing_masks)


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


def finite_float(text: str) -> float:
    """argparse ``type=``: a finite number (``nan`` and ``inf`` are argument errors, never a saved threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number: pass e.g. 0.1")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1 (argparse then exits 2 with this message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: pass a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1: pass a whole number, e.g. 16")
    return value


@contextlib.contextmanager
def atomic_file(path: Path, newline: Optional[str] = "") -> Iterator[TextIO]:
    """Write a text file that readers only ever see whole: a hidden temp sibling, flushed, then
    ``os.replace`` d over ``path`` (a crash leaves the old file or none, never half a CSV)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "w", newline=newline, encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """``columns`` then ``rows`` as a CSV at ``path``, written through :func:`atomic_file`."""
    with atomic_file(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


ERRORS_CSV = "errors.csv"
ERRORS_COLUMNS = ("path", "error")


@dataclass
class BatchErrors:
    """Images a batch job skipped: a warning each, ``errors.csv``, a count in the summary, and
    exit status 1 only with ``--strict`` (an unreadable file never becomes a "normal" row)."""

    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: Path, error: BaseException) -> None:
        message = " ".join(str(error).split())
        print(f"warning: skipped {path}: {message}", file=sys.stderr)
        self.rows.append((str(path), message))

    def report(self, out: Path, total: int) -> None:
        """Write ``out/errors.csv`` (atomically) and print the count, when anything was skipped."""
        if not self.rows:
            return
        write_csv(out / ERRORS_CSV, ERRORS_COLUMNS, self.rows)
        print(f"{len(self.rows)} of {total + len(self.rows)} images could not be read and were skipped: {out / ERRORS_CSV}")

    def exit_code(self, strict: bool) -> int:
        return 1 if strict and self.rows else 0


def readable(images: Sequence[Path], errors: BatchErrors, what: str, progress: bool = True) -> list[Path]:
    """The images the shared reader can decode; the others are recorded in ``errors``. All
    unreadable is an error (nothing would be left to fit or score)."""
    from tqdm.auto import tqdm

    from adpretrain_hf.modeling.image_io_adpretrain import read_image

    kept = []
    for path in tqdm(images, desc=f"check {what}", unit="img", disable=not progress or len(images) < 2):
        try:
            read_image(path, what)
        except (ValueError, OSError) as err:
            errors.add(path, err)
        else:
            kept.append(path)
    if not kept:
        raise CommandError(f"none of the {len(images)} {what} images could be read", f"see the warnings above and {ERRORS_CSV}")
    return kept


CHUNK_BATCHES = 4  # batches handed to a pipeline per call (the progress bar advances per call)


def score_in_chunks(pipe: Any, images: Sequence[Path], batch_size: int, errors: BatchErrors, bar: Any = None,
                    **call_kwargs: Any) -> Iterator[tuple[Path, dict]]:
    """``(path, result)`` of ``pipe`` over ``images``, a few batches per call. A chunk that fails to
    read is retried image by image, so one unreadable or truncated file is skipped (recorded in
    ``errors``) and every other image is still scored."""
    chunk = batch_size * CHUNK_BATCHES
    for start in range(0, len(images), chunk):
        paths = list(images[start : start + chunk])
        try:
            results = list(zip(paths, pipe([str(p) for p in paths], batch_size=batch_size, **call_kwargs)))
        except (ValueError, OSError):
            results = []
            for path in paths:
                try:
                    results.append((path, pipe([str(path)], batch_size=1, **call_kwargs)[0]))
                except (ValueError, OSError) as err:
                    errors.add(path, err)
        yield from results
        if bar is not None:
            bar.update(len(paths))


def resolve_device(name: str) -> str:
    """``--device`` checked against this machine (in ``run``: imports torch): ``auto`` -> ``cuda``
    when a GPU is visible, else ``cpu``; a CUDA device this machine lacks is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise CommandError(f"--device {name}: this machine has {count} visible CUDA device(s)", "use --device auto or cpu")
    return name
