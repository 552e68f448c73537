"""``DetectorModule``: a fitted anomaly detector as an ``nn.Module`` (anomalib's ``torch_model`` pattern).

One class per method; its fitted state lives in registered buffers (PatchCore's memory bank,
PaDiM's means and Cholesky factors) or, for the trained methods, in a network's parameters and
buffers. ``forward(features, image_size) -> (anomaly_map, score)`` is the ONE scoring path:
the fitting code (``adpretrain_hf.detectors``), evaluation, ``ADPretrainDetectorModel`` and the
ONNX export all call it.

Shapes::

    features      list of [B, C_l, h_l, w_l]   the used layers' maps (float32)
    anomaly_map   [B, H, W]                    per-layer grids upsampled, averaged, smoothed
    score         [B]                          the method's image score

The registry ``DETECTOR_MODULES`` maps a method name to its class. FeatureNorm, PatchCore and
PaDiM register here (modeling/, so a folder of theirs loads with ``trust_remote_code`` where
the package is not installed); CFLOW, GLASS and UniAD register where their classes are
defined (``adpretrain_hf.detectors``), so a folder of theirs needs ``import adpretrain_hf``.

Part of the remote-code bundle: imports only torch and its siblings.
"""

from __future__ import annotations

import difflib
import inspect
import math
import sys
from typing import Any, ClassVar, Iterable, Optional, Sequence

import torch
from torch import nn

from .anomaly_map_adpretrain import GAUSSIAN_SIGMA, anomaly_map_from_grids
from .dtypes_adpretrain import stored_dtype

__all__ = [
    "DETECTOR_MODULES",
    "DetectorModule",
    "allocate_buffers",
    "build_detector_module",
    "check_finite",
    "check_options",
    "constructor_options",
    "closest_name_hint",
    "detector_module_class",
    "register_detector_module",
]

#: method name -> its DetectorModule class (filled by ``register_detector_module``)
DETECTOR_MODULES: dict[str, type["DetectorModule"]] = {}
_PACKAGE_COPY = "adpretrain_hf.modeling.detector_module_adpretrain"  # the installed package's copy of this file


def register_detector_module(cls: type["DetectorModule"]) -> type["DetectorModule"]:
    """Class decorator: ``DETECTOR_MODULES[cls.method] = cls``."""
    if not cls.method:
        raise ValueError(f"{cls.__name__} sets no method name: give the class a `method` attribute")
    DETECTOR_MODULES[cls.method] = cls
    return cls


def closest_name_hint(name: str, valid: Sequence[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest valid name, or ``""``."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def detector_module_class(method: str) -> type["DetectorModule"]:
    """The registered class of ``method``; a folder loaded as remote code while the package is
    imported finds the package's methods in the package's registry (one module object each)."""
    registries = [DETECTOR_MODULES]
    package_copy = sys.modules.get(_PACKAGE_COPY)
    if package_copy is not None and package_copy.DETECTOR_MODULES is not DETECTOR_MODULES:
        registries.append(package_copy.DETECTOR_MODULES)
    for registry in registries:
        if method in registry:
            return registry[method]
    known = sorted(set().union(*registries))
    raise KeyError(
        f"no detector module {method!r} is registered (known: {known}): CFLOW, GLASS and UniAD register when "
        "adpretrain_hf is imported (pip install adpretrain-hf, then import adpretrain_hf)"
    )


def build_detector_module(
    method: str, settings: dict, shapes: Optional[dict] = None, dtypes: Optional[dict] = None
) -> "DetectorModule":
    """A method's module from its saved settings, with zero buffers of ``shapes`` (to be loaded), in eval mode."""
    cls = detector_module_class(method)
    check_options(method, settings, constructor_options(cls))
    module = cls(**settings)
    return allocate_buffers(module, shapes or {}, dtypes or {}).eval()


def allocate_buffers(module: nn.Module, shapes: dict, dtypes: dict) -> nn.Module:
    """``module`` with zero persistent buffers of the saved shapes (and stored dtypes, float32 by default),
    so ``load_state_dict`` / ``from_pretrained`` can fill them."""
    for name, shape in shapes.items():
        module.register_buffer(name, torch.zeros([int(d) for d in shape], dtype=stored_dtype(dtypes.get(name, "float32"))))
    return module


def constructor_options(cls: type, skip: Sequence[str] = ("self",)) -> list[str]:
    """The named options of ``cls``'s constructors (its own and its bases'), sorted."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names.update(p.name for p in inspect.signature(klass.__init__).parameters.values()
                         if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in skip)
    return sorted(names)


def check_options(method: str, given: Iterable[str], valid: Sequence[str]) -> None:
    """A one-line error for the first of ``given`` that is not in ``valid``, naming the closest valid one."""
    for key in given:
        if key not in valid:
            raise ValueError(f"unknown {method} option {key!r}{closest_name_hint(key, valid)}: valid options are {valid}")


def check_finite(tensor: torch.Tensor, what: str, fix: str) -> None:
    """Raise ``ValueError`` when ``tensor`` holds NaN or inf (never while tracing for export)."""
    if torch.jit.is_tracing() or not tensor.is_floating_point() or tensor.is_meta:
        return
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{what} hold NaN or inf: {fix}")


class DetectorModule(nn.Module):
    """Base of every method's scoring module.

    Subclasses set ``method``, implement ``score_grids`` and, when they hold fitted tensors,
    ``required_buffers``; options are constructor keywords, saved as ``settings()`` and
    checked there (one-line errors; an unknown option is named with the closest valid one).

    Args:
        sigma: Gaussian smoothing of the map (``GAUSSIAN_SIGMA = 4``; 0 leaves the map unsmoothed).
    """

    method: ClassVar[str] = ""

    def __init__(self, *, sigma: float = GAUSSIAN_SIGMA) -> None:
        super().__init__()
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma must be a finite number >= 0 (the map's Gaussian smoothing; 0 = none), got {sigma!r}")
        self.sigma = float(sigma)

    # -- options -------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """JSON-able constructor keywords that rebuild this module (with ``allocate`` + its buffers)."""
        return {"sigma": self.sigma}

    # -- fitted state ------------------------------------------------------------------------
    def required_buffers(self) -> list[str]:
        """Names of the fitted buffers scoring needs (all must be present and finite)."""
        return []

    def set_fitted(self, tensors: dict[str, Optional[torch.Tensor]]) -> None:
        """Store fitted tensors as persistent buffers, refusing NaN/inf (a broken fit never scores)."""
        for name, value in tensors.items():
            if value is not None:
                check_finite(value, f"the fitted {self.method} tensor {name!r}", "check the training features for NaN/inf")
            self.register_buffer(name, value)

    def fitted_tensors(self) -> dict[str, torch.Tensor]:
        """The fitted buffers by name (not a trained network's weights: those are its state dict)."""
        return {name: buf for name, buf in self._buffers.items() if buf is not None and name not in self._non_persistent_buffers_set}

    def check_fitted(self) -> None:
        """Every required fitted tensor present, non-empty and finite, else a one-line error."""
        for name in self.required_buffers():
            value = self._buffers.get(name)
            if value is None or value.numel() == 0:
                raise ValueError(f"the {self.method} detector has no fitted {name!r}: fit it (or load a complete folder) first")
            check_finite(value, f"the fitted {self.method} tensor {name!r}", "refit the detector (the saved state is broken)")

    # -- scoring -------------------------------------------------------------------------
    def score_grids(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        """Per-layer score grids ``[B, h_l, w_l]`` and, where the method has its own image score
        that needs no map, that score ``[B]`` (else None)."""
        raise NotImplementedError

    def anomaly_map(self, grids: list[torch.Tensor], image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer grids -> ``(anomaly_map [B, H, W], its max [B])``: upsampled (``align_corners=False``),
        averaged, smoothed. A method with variants takes its variant's rule instead."""
        return anomaly_map_from_grids(grids, image_size, self.sigma)

    def image_score(self, maps: torch.Tensor, map_max: torch.Tensor, grids: list[torch.Tensor],
                    own: Optional[torch.Tensor]) -> torch.Tensor:
        """Image score ``[B]``: the method's own (``own``) or the max of the smoothed map."""
        return map_max if own is None else own

    def forward(self, features: Sequence[torch.Tensor], image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``features`` (the used layers ``[B, C_l, h_l, w_l]``) -> ``(anomaly_map [B, H, W], score [B])``.

        A non-finite map or score is an error naming the image's index in the batch, never a label.
        """
        grids, own = self.score_grids(features)
        maps, map_max = self.anomaly_map(grids, tuple(image_size))
        scores = self.image_score(maps, map_max, grids, own)
        if not torch.jit.is_tracing():
            bad = ~(torch.isfinite(scores) & torch.isfinite(maps.flatten(1)).all(dim=1))
            if bool(bad.any()):
                index = int(bad.nonzero()[0, 0])
                raise FloatingPointError(
                    f"{self.method}: image {index} of the batch scored NaN/inf: its features or the fitted state hold "
                    "NaN/inf (check the image and refit the detector)"
                )
        return maps, scores
