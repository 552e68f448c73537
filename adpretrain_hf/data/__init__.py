"""Anomaly-detection data: loaders to ``datasets.Dataset``, a synthetic generator, mask -> patch
labels, two-view augmentation and reference sampling.

Every loader returns rows with the columns of :data:`AD_FEATURES` (``docs/ARCHITECTURE.md``,
"Data contract"). Other names are imported lazily, so ``datasets`` loads only when a name
that needs it is used.

Modules:
    schema: the row schema and shared loader checks.
    realiad: Real-IAD loader and its evaluation split (official JSON splits, else seeded).
    realiad_splits: finding and reading Real-IAD's official split files.
    mvtec_style: MVTec AD, MPDD, MVTec 3D-AD (RGB), BTAD, VisA.
    layouts: layout detection and the one ``load_ad_dataset`` entry point.
    synthetic (+ synthetic_scenes, synthetic_defects): offline datasets with masks.
    patch_labels: pixel masks -> per-patch labels.
    augment: two photometric views; image/mask loading for a row.
    sampling: normal reference indices per (category, view).
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported eagerly so that the package attribute `patch_labels` is the function, not the
# submodule of the same name (importing a submodule later would otherwise shadow it).
from .patch_labels import PATCH_ANOMALY_FRACTION, patch_fractions, patch_labels

_EXPORTS: dict[str, str] = {
    "AD_FEATURES": "schema",
    "GOOD_DEFECT": "schema",
    "VIEW_NAMES": "schema",
    "load_realiad": "realiad",
    "realiad_eval_split": "realiad",
    "REALIAD_SPLIT_ATTRIBUTE": "realiad",
    "find_split_folders": "realiad_splits",
    "parse_view": "realiad",
    "load_mvtec_style": "mvtec_style",
    "KNOWN_LAYOUTS": "layouts",
    "detect_layout": "layouts",
    "load_ad_dataset": "layouts",
    "SYNTHETIC_CATEGORIES": "synthetic",
    "SYNTHETIC_LAYOUTS": "synthetic",
    "TEXTURE_CATEGORIES": "synthetic",
    "OBJECT_CATEGORIES": "synthetic",
    "DEFECT_KINDS": "synthetic",
    "GeneratedDataset": "synthetic",
    "SyntheticSample": "synthetic",
    "generate_dataset": "synthetic",
    "render_views": "synthetic",
    "TwoViewAugment": "augment",
    "load_image_and_mask": "augment",
    "ReferenceSampler": "sampling",
}

__all__ = sorted([*_EXPORTS, "PATCH_ANOMALY_FRACTION", "patch_fractions", "patch_labels"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
