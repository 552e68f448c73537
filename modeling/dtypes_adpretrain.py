"""Precision names users may pass (``"bf16"``, ``"float16"``, ...) and the torch dtypes they mean.

One table for the pipelines, the evaluation runner and the CLI, so a name accepted in one place
is accepted everywhere. Part of the remote-code bundle: imports only torch.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""Canonical names (CLI choices); every alias below maps to one of them."""
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def dtype_from_name(value: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    """``None`` / a ``torch.dtype`` / a name of :data:`DTYPES` (any case) -> ``torch.dtype`` or ``None``."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value.lower() in DTYPES:
        return DTYPES[value.lower()]
    raise ValueError(f"dtype={value!r} is not supported: pass one of {sorted(DTYPES)} (or a torch.dtype)")


def stored_dtype(name: str) -> torch.dtype:
    """The dtype a saved tensor names as ``str(dtype)`` less ``"torch."`` (``"int64"``, ``"bool"``, ...).

    Not :data:`DTYPES`: a stored tensor may be any torch dtype, not only a model precision.
    """
    dtype = getattr(torch, name, None) if isinstance(name, str) and name else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"stored dtype {name!r} is not a torch dtype: fix the folder's config.json (e.g. 'float32', 'int64') or re-save it")
    return dtype


__all__ = ["DTYPES", "DTYPE_NAMES", "dtype_from_name", "stored_dtype"]
