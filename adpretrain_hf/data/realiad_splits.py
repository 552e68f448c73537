"""Real-IAD's official split files: find them beside the images and read one class's split.

Real-IAD is distributed as image trees (``realiad_256/``, ``realiad_512/``, ``realiad_1024/``)
beside split folders, often all nested in one ``realiad_jsons/`` folder::

    realiad_jsons/                 the multi-view benchmark split (published numbers use it)
    realiad_jsons_sv/              single view
    realiad_jsons_fuiad_0.0 ... 0.4  fully unsupervised: that share of anomalies in "train"

Each holds ``<class>.json`` = ``{"meta": {...}, "train": [...], "test": [...]}``, each entry
``{"category", "anomaly_class", "image_path", "mask_path"}`` with paths relative to the image
root. Published Real-IAD numbers use these splits, so the evaluation prefers them to a
seeded split of its own (``adpretrain_hf.data.realiad.realiad_eval_split``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional

OFFICIAL_SPLIT_PREFIX = "realiad_jsons"
DEFAULT_OFFICIAL_SPLIT = "realiad_jsons"
"""The split ``split="auto"`` looks for: the multi-view benchmark split."""
SEEDED_SPLIT = "seeded"
"""Name recorded when no official split file is used (the package's seeded 50/50 split)."""
JSON_KEYS = ("train", "test")


def _is_split_folder(path: Path) -> bool:
    return path.is_dir() and path.name.startswith(OFFICIAL_SPLIT_PREFIX) and any(path.glob("*.json"))


def find_split_folders(image_root: str | os.PathLike) -> dict[str, Path]:
    """Split folders (name -> path) next to or inside ``image_root``, also one level nested in a
    ``realiad_jsons/`` folder. The first found of a name wins, searching the root, then its parent."""
    root = Path(os.path.abspath(image_root))
    found: dict[str, Path] = {}
    for base in (root, root.parent):
        if not base.is_dir():
            continue
        for child in sorted(base.iterdir()):
            if not (child.is_dir() and child.name.startswith(OFFICIAL_SPLIT_PREFIX)):
                continue
            if _is_split_folder(child):
                found.setdefault(child.name, child)
            for nested in sorted(child.iterdir()):
                if _is_split_folder(nested):
                    found.setdefault(nested.name, nested)
    return found


def read_class_split(folder: Path, category: str) -> dict[str, list[dict]]:
    """``{"train": entries, "test": entries}`` of ``<folder>/<category>.json``."""
    path = folder / f"{category}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no split file {path}: the official split lacks class {category!r}")
    with open(path) as handle:
        content = json.load(handle)
    if not isinstance(content, dict) or any(not isinstance(content.get(key), list) for key in JSON_KEYS):
        raise ValueError(f"{path} is not a Real-IAD split file: expected {{'meta', 'train': [...], 'test': [...]}}")
    for key in JSON_KEYS:
        for entry in content[key]:
            if not isinstance(entry, dict) or "image_path" not in entry:
                raise ValueError(f"{path}: every {key!r} entry needs an 'image_path', got {entry!r}")
    return {key: content[key] for key in JSON_KEYS}


def _keys(relative: str) -> Iterable[str]:
    """Match keys of an image path: the whole relative path, then shorter suffixes (a path
    written relative to the class folder, or under a prefix), down to the file name."""
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    for start in range(len(parts)):
        yield "/".join(parts[start:])


def assign_rows(
    image_paths: list[str], categories: list[str], image_root: Path, folder: Path
) -> tuple[dict[int, str], dict[str, dict[str, int]]]:
    """Which rows the split files put in train / test.

    Args:
        image_paths: absolute image path per dataset row.  categories: category per row.
        image_root: the folder the JSON paths are relative to.  folder: the split folder.

    Returns:
        ``{row: "train" | "test"}`` for the rows listed (rows not listed are left out), and
        per category ``{"train": n, "test": n, "listed_not_found": n}``.
    """
    lookup: dict[tuple[str, str], int] = {}
    ambiguous: set[tuple[str, str]] = set()
    for row, (path, category) in enumerate(zip(image_paths, categories)):
        try:
            relative = Path(os.path.abspath(path)).relative_to(image_root).as_posix()
        except ValueError:
            relative = Path(path).name
        for key in _keys(relative):
            if (category, key) in lookup and lookup[(category, key)] != row:
                ambiguous.add((category, key))
            lookup.setdefault((category, key), row)
    assigned: dict[int, str] = {}
    counts: dict[str, dict[str, int]] = {}
    for category in sorted(set(categories)):
        split = read_class_split(folder, category)
        counts[category] = {"train": 0, "test": 0, "listed_not_found": 0}
        for key in JSON_KEYS:
            for entry in split[key]:
                row = next(
                    (lookup[(category, k)] for k in _keys(str(entry["image_path"]))
                     if (category, k) in lookup and (category, k) not in ambiguous),
                    None,
                )
                if row is None:
                    counts[category]["listed_not_found"] += 1
                    continue
                if assigned.setdefault(row, key) != key:
                    raise ValueError(f"{folder / (category + '.json')} lists {entry['image_path']!r} in both train and test")
                counts[category][key] += 1
    return assigned, counts


def choose_split_folder(image_root: Path, split: str) -> Optional[Path]:
    """The folder of ``split`` ("auto" = the benchmark split if present, else None)."""
    folders = find_split_folders(image_root)
    if split == "auto":
        return folders.get(DEFAULT_OFFICIAL_SPLIT)
    if split not in folders:
        raise ValueError(
            f"split {split!r} not found next to {image_root} (found: {sorted(folders) or 'none'}): put the "
            f"{split}/ folder beside the image root, or use split='auto' / '{SEEDED_SPLIT}'"
        )
    return folders[split]
