"""Reading an authors' release checkpoint file safely: main.py's ``.pth`` wrapping, loaded with
``torch.load(weights_only=True)`` under an allow-list of the numpy scalars its metrics pickle as.

Why its own module: *whether a file may be read at all* (no pickled code runs) is one
responsibility; mapping the release's keys onto the package's projectors is another
(:mod:`adpretrain_hf.convert_release`, which imports this). Tested through the release
checkpoint fixture: ``tests/release_parity/test_projector.py``.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Union

import numpy
import torch

PROJECTORS_ENTRY = "projectors"
CENTER_ENTRIES = ("centers", "center")
MAX_LISTED = 12
CHECK_HINT = (
    "the release key table is in adpretrain_hf/convert_release.py (docs/CONVERTING_RELEASE.md): check that the "
    "file is a release projector checkpoint and that --preset is the backbone it was trained on"
)


def _numpy_scalar() -> Any:
    core = getattr(numpy, "_core", None) or numpy.core  # numpy >= 2 / numpy 1.x
    return core.multiarray.scalar


def safe_numpy_globals() -> list:
    """The only non-tensor globals a release checkpoint may reference: main.py's numpy.float64 metrics.

    ``numpy.float64`` pickles as ``numpy._core.multiarray.scalar(dtype, bytes)`` (numpy 2) or
    ``numpy.core.multiarray.scalar`` (numpy 1.x), with ``numpy.dtype`` / ``numpy.dtypes.Float64DType``.
    """
    scalar = _numpy_scalar()
    allowed: list = [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), numpy.dtype]
    float64_dtype = getattr(getattr(numpy, "dtypes", None), "Float64DType", None)
    if float64_dtype is not None:
        allowed.append(float64_dtype)
    return allowed


SAFE_GLOBAL_NAMES = (
    "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype", "numpy.dtypes.Float64DType",
)
"""What :func:`safe_numpy_globals` allows, by name (for messages and docs)."""


class ReleaseCheckpointError(ValueError):
    """The file is not a release projector checkpoint we can map; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = CHECK_HINT) -> None:
        super().__init__(message)
        self.hint = hint


def load_release_file(path: Union[str, os.PathLike]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` under :func:`safe_numpy_globals`.

    Why weights_only: a ``.pth`` is a pickle, and unpickling runs arbitrary code; the release
    needs tensors in dicts plus main.py's numpy.float64 metrics, which the allow-list admits by
    name. Anything else is refused before it is constructed, with a one-line reason.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"release checkpoint {path} does not exist: pass the path of the release's projector .pth file")
    try:
        with torch.serialization.safe_globals(safe_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _unpickler_detail(str(err))
        if "Unsupported global" in detail:
            raise ReleaseCheckpointError(
                f"{path} holds Python objects other than tensors, dicts, lists, numbers and numpy float64 scalars; it is "
                f"refused because we only load with torch.load(weights_only=True) and the allow-list "
                f"{', '.join(SAFE_GLOBAL_NAMES)}, and never run pickled code ({detail})",
                "if you trust the file, re-save just its tensors, e.g. torch.save({'projectors': ckpt['projectors']}, 'clean.pth')",
            ) from None
        raise ReleaseCheckpointError(
            f"{path} is not a readable torch checkpoint, or uses pickle features that weights_only=True refuses ({detail})",
            "pass the release's .pth file",
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for files that are not checkpoints
        raise ReleaseCheckpointError(
            f"{path} is not a readable torch checkpoint ({type(err).__name__}: {err})", "pass the release's .pth file"
        ) from None


def _unpickler_detail(message: str) -> str:
    """The one informative sentence of torch's long weights_only error."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return rest.split(". Please")[0][:200]
    return lines[0][:200] if lines else "no detail"


def extract_release_state(obj: Any, path: str = "checkpoint") -> tuple[dict[str, Any], Any]:
    """Find the projectors' state dict (and the optional centers entry) in a loaded file.

    Accepts ``{"projectors": state_dict, ...}``, ``{"projectors": [state_dict per layer], ...}``
    or a bare state dict (a dict of tensors). Returns ``(flat state dict, centers or None)``.
    """
    if not isinstance(obj, dict):
        raise ReleaseCheckpointError(
            f"{path} holds a {type(obj).__name__}, not a dict: expected {{'projectors': state_dict, ...}} or a bare state dict",
            "pass the release's projector checkpoint, not a tensor/list dump",
        )
    if PROJECTORS_ENTRY in obj and not isinstance(obj[PROJECTORS_ENTRY], torch.Tensor):
        entry = obj[PROJECTORS_ENTRY]
        if isinstance(entry, (list, tuple)) and all(isinstance(sd, dict) for sd in entry):
            state = {f"{i}.{k}": v for i, sd in enumerate(entry) for k, v in sd.items()}
        elif isinstance(entry, dict):
            state = dict(entry)
        else:
            raise ReleaseCheckpointError(f"{path}: the 'projectors' entry is a {type(entry).__name__}, not a state dict")
        centers = next((obj[name] for name in CENTER_ENTRIES if name in obj), None)
        return state, centers
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), None
    raise ReleaseCheckpointError(
        f"{path} has no 'projectors' entry and is not a bare state dict; its top-level entries are "
        f"{listed(sorted(map(str, obj)))}",
        "pass the release's projector checkpoint (a dict with a 'projectors' state dict)",
    )



def listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")
