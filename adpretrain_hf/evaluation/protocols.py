"""The paper's evaluation protocols as one seeded selection of training and test images.

* full data (Table 1): every normal training image fits the detector.
* sample efficiency (4.4, Table 3a): ``train_fraction=0.1`` keeps that share of the normal
  training images (rounded, at least 1), drawn with the split seed.
* robustness to noise (4.4, Table 3b): ``noise_ratio=0.1`` adds ``int(0.1 * num_normal_train)``
  anomalous *test* images to the training set -- SoftPatch's count, relative to the normal
  training images -- and keeps them in the test set too (SoftPatch's "overlap" setting,
  which the paper adopts). The detector is not told which training images are anomalous.
* few-shot (4.5, Table 5): ``train_shots=2|4`` keeps exactly that many normal training images.

Draws use ``numpy.random.default_rng([split_seed, crc32(category)])``, so a category's
selection does not depend on which other categories run, and is the same on every machine.

Detector protocols (``EvaluationConfig.protocol``; docs/EVALUATION.md): which *variant* of each
detector scores and which post-processing runs after it. ``"release"`` (the default) is the
released code's maths, proven on its own outputs (tests/release_parity/); ``"package"`` keeps
the package's own choices. A protocol is data: per method the detector constructor options
(:func:`protocol_detector_options`, passed to the detectors by ``cell.run_cell``) and the named
post-processing steps (:func:`apply_post_processing`, run by ``cell.run_cell`` once over a cell's
whole test set), plus the evaluation settings it fixes
(:func:`protocol_deviations` names any run that departs from them).
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..modeling.release_scoring_adpretrain import global_min_max_normalise
from .config import DEFAULT_SHOTS, NOISE_SETTING, PROTOCOL_CHOICES, EvaluationConfig


@dataclass
class ProtocolSelection:
    """Positions (into a category's train / test rows) that the protocol selected.

    ``train_normal``: normal training images that fit the detector (and form the reference
    pool). ``noise``: anomalous test images also put into the training set (they stay in
    the test set).
    """

    train_normal: list[int]
    noise: list[int]
    num_train_normal_available: int

    @property
    def num_train(self) -> int:
        return len(self.train_normal) + len(self.noise)


def category_rng(split_seed: int, category: str) -> np.random.Generator:
    """The generator of one category's protocol draws (independent of other categories)."""
    return np.random.default_rng([split_seed, zlib.crc32(category.encode("utf-8"))])


def _subsample(count: int, keep: int, rng: np.random.Generator) -> list[int]:
    """``keep`` of ``range(count)`` drawn without replacement, returned in ascending order."""
    if keep >= count:
        return list(range(count))
    return sorted(int(i) for i in rng.permutation(count)[:keep])


def select_protocol(
    category: str, train_labels: list[int], test_labels: list[int], config: EvaluationConfig
) -> ProtocolSelection:
    """Apply ``train_fraction`` / ``train_shots`` / ``noise_ratio`` to one category.

    Args:
        category: the category name (seeds its draws).
        train_labels: labels of its training rows (only 0s are used; a stray 1 is ignored).
        test_labels: labels of its test rows (noise is drawn from the 1s).

    Raises ``ValueError`` when the category has no normal training image, or fewer than
    ``train_shots``.
    """
    normal = [i for i, label in enumerate(train_labels) if label == 0]
    if not normal:
        raise ValueError(f"category {category!r} has no normal training image: add some or leave the category out")
    rng = category_rng(config.split_seed, category)
    if config.train_shots is not None:
        if config.train_shots > len(normal):
            raise ValueError(
                f"train_shots={config.train_shots} but category {category!r} has only {len(normal)} normal "
                "training images: pass a smaller train_shots"
            )
        keep = config.train_shots
    else:
        keep = max(1, int(round(config.train_fraction * len(normal))))
    chosen = [normal[i] for i in _subsample(len(normal), keep, rng)]

    noise: list[int] = []
    if config.noise_ratio > 0:
        anomalous = [i for i, label in enumerate(test_labels) if label == 1]
        wanted = int(math.floor(config.noise_ratio * len(chosen) + 1e-9))  # SoftPatch: int(noise * len(train))
        if wanted == 0:
            warnings.warn(
                f"noise_ratio={config.noise_ratio} of {len(chosen)} normal training images rounds down to 0 "
                f"anomalous images for category {category!r}: no noise is added (use a larger ratio)",
                stacklevel=2,
            )
        if wanted > len(anomalous):
            warnings.warn(
                f"noise_ratio={config.noise_ratio} asks for {wanted} anomalous images in category {category!r} "
                f"but its test set has {len(anomalous)}: using all of them",
                stacklevel=2,
            )
            wanted = len(anomalous)
        noise = [anomalous[i] for i in _subsample(len(anomalous), wanted, rng)]
    return ProtocolSelection(chosen, noise, len(normal))


def protocol_record(config: EvaluationConfig) -> dict[str, Any]:
    """The run-level protocol settings of ``results.json`` (per-category counts are added by the runner)."""
    return {
        "train_fraction": config.train_fraction,
        "train_shots": config.train_shots,
        "noise_ratio": config.noise_ratio,
        "noise_setting": NOISE_SETTING if config.noise_ratio > 0 else None,
        "noise_count_rule": "int(noise_ratio * num_normal_train_images), anomalous test images, also kept in test",
        "split_seed": config.split_seed,
        "shots": config.shots,
        "reference_strategy": config.effective_strategy,
        "reference_strategy_requested": config.reference_strategy,
        "reference_seeds": config.seeds,
        "quick": config.quick,
        "detector_protocol": detector_protocol_record(config),
        "per_category": {},
    }


def category_protocol_record(
    selection: ProtocolSelection, train_ids: list[str], test_ids: list[str], test_labels: list[int], k: int
) -> dict[str, Any]:
    """Counts and sample ids of one category's selection (what was fitted on, what was tested)."""
    return {
        "num_train_normal_available": selection.num_train_normal_available,
        "num_train_normal": len(selection.train_normal),
        "num_noise": len(selection.noise),
        "num_train": selection.num_train,
        "num_test": len(test_ids),
        "num_test_anomalous": sum(test_labels),
        "num_references": k,
        "train_sample_ids": [train_ids[i] for i in selection.train_normal],
        "noise_sample_ids": [test_ids[i] for i in selection.noise],
    }


def effective_shots(shots: int, pool_size: int, category: str) -> int:
    """References per query: ``shots``, or the whole pool when it is smaller (few-shot runs)."""
    if shots > pool_size:
        warnings.warn(
            f"shots={shots} but category {category!r} has {pool_size} normal training images to draw "
            f"references from: using {pool_size}",
            stacklevel=2,
        )
        return pool_size
    return shots



# -- detector protocols ------------------------------------------------------------------------
GLOBAL_MIN_MAX = "global_min_max"
"""Release PaDiM's step: maps min-max normalised with ONE min/max over the whole test set."""
POST_PROCESSING_STEPS: Mapping[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = MappingProxyType(
    {GLOBAL_MIN_MAX: global_min_max_normalise}
)


@dataclass(frozen=True)
class DetectorProtocol:
    """One named detector protocol.

    ``detector_options``: method -> constructor options of its detector (what each option means
    is in docs/EVALUATION.md); ``post_processing``: method -> names of :data:`POST_PROCESSING_STEPS`
    run, in order, on the test set's maps ``[N, H, W]``; ``fixed``: evaluation settings the
    protocol assumes (``EvaluationConfig`` field -> value); ``preprocessing``: what images go
    through before the backbone, in words.
    """

    name: str
    description: str
    detector_options: Mapping[str, Mapping[str, Any]]
    post_processing: Mapping[str, tuple[str, ...]]
    fixed: Mapping[str, Any]
    preprocessing: str


_RELEASE_PREPROCESSING = (
    "the preset's processor: bicubic shorter-side resize, center crop to image_size, the backbone's mean/std "
    "(masks: the same geometry, nearest, binarised)"
)

DETECTOR_PROTOCOLS: Mapping[str, DetectorProtocol] = MappingProxyType({
    "release": DetectorProtocol(
        name="release",
        description="the released ADPretrain code's detectors (equal to its outputs, tests/release_parity/)",
        detector_options=MappingProxyType({
            # last 3 levels, each level's 3x3 neighbourhood pooled to 1024, concat pooled to 1024;
            # approximate greedy 10% coreset; squared L2; image score = max patch; align_corners=False
            "patchcore": MappingProxyType({"variant": "release", "image_score": "max"}),
            # per level and position: mean, unbiased cov + 0.01 I, explicit inverse, sqrt Mahalanobis;
            # grids upsampled with align_corners=True and averaged
            "padim": MappingProxyType({"variant": "release"}),
            # token score sqrt(||e|| + 1) - 1 per level, align_corners=True, level mean
            "featurenorm": MappingProxyType({"variant": "release"}),
        }),
        post_processing=MappingProxyType({"padim": (GLOBAL_MIN_MAX,)}),
        fixed=MappingProxyType({"shots": DEFAULT_SHOTS, "reference_strategy": "first", "reference_seeds": 1}),
        preprocessing=_RELEASE_PREPROCESSING,
    ),
    "package": DetectorProtocol(
        name="package",
        description="the package's own variants (channel-weighted PatchCore, Eq. 7, ||e|| FeatureNorm, ...)",
        detector_options=MappingProxyType({
            "patchcore": MappingProxyType({"variant": "package", "image_score": "reweighted"}),
            "padim": MappingProxyType({"variant": "package"}),
            "featurenorm": MappingProxyType({"variant": "package"}),
        }),
        post_processing=MappingProxyType({}),
        fixed=MappingProxyType({}),
        preprocessing=_RELEASE_PREPROCESSING,
    ),
})


def detector_protocol(name: str) -> DetectorProtocol:
    """The protocol called ``name`` (``ValueError`` naming the choices otherwise)."""
    if name not in DETECTOR_PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}: choose one of {list(PROTOCOL_CHOICES)}")
    return DETECTOR_PROTOCOLS[name]


def protocol_detector_options(name: str, method: str) -> dict[str, Any]:
    """Constructor options of ``method``'s detector under protocol ``name`` (``{}``: its defaults,
    e.g. for cflow / glass / uniad, which no protocol changes)."""
    return dict(detector_protocol(name).detector_options.get(method, {}))


def apply_post_processing(name: str, method: str, maps: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the protocol's post-processing of ``method`` on the whole test set's ``maps [N, H, W]``.

    Returns ``(maps, image scores [N])``; unchanged when the protocol has no step for the method.
    Call it once per (category, method, kind) on ALL test maps together: the release's global
    min-max is defined over the set, not per batch.
    """
    for step in detector_protocol(name).post_processing.get(method, ()):
        maps, scores = POST_PROCESSING_STEPS[step](maps)
    return maps, scores


def protocol_deviations(config: EvaluationConfig) -> list[str]:
    """Settings of ``config`` that depart from what its protocol fixes, one line each (empty: none).

    The runner records them in ``results.json`` so a number is never reported as the release's
    protocol when, e.g., 2 references per query were used.
    """
    fixed = detector_protocol(config.protocol).fixed
    deviations = []
    for field_name, value in fixed.items():
        got = config.effective_strategy if field_name == "reference_strategy" else getattr(config, field_name)
        if got != value:
            deviations.append(f"{field_name}={got!r} (protocol {config.protocol!r} fixes {value!r})")
    return deviations


def detector_protocol_record(config: EvaluationConfig) -> dict[str, Any]:
    """The ``results.json`` entry of the detector protocol: its options, steps, settings and deviations."""
    protocol = detector_protocol(config.protocol)
    return {
        "name": protocol.name,
        "description": protocol.description,
        "detector_options": {m: dict(o) for m, o in protocol.detector_options.items() if m in config.methods},
        "post_processing": {m: list(s) for m, s in protocol.post_processing.items() if m in config.methods},
        "fixed": dict(protocol.fixed),
        "preprocessing": protocol.preprocessing,
        "deviations": protocol_deviations(config),
    }
