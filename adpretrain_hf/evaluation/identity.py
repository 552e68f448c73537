"""Which model a results.json belongs to: a config hash, a weights hash and the checkpoint it came from.

Why: a model card copies numbers from ``results.json``. Without a record of the evaluated
model, a card could claim another model's 97.9 I-AUROC. The runner records
:func:`model_identity` in ``results.json`` (``"model_identity"``); ``adpretrain card`` recomputes
it from the checkpoint and refuses results whose hashes differ (:func:`check_identity`).

- ``config_sha256``: SHA-256 of the model config as canonical JSON, without the keys that
  describe where or how it was saved rather than the model (``_name_or_path``,
  ``transformers_version``, ``dtype``, code-loading maps...).
- ``weights_sha256``: SHA-256 over every tensor of the state dict (backbone, projectors,
  centers) as float32 bytes in key order, taken before any dtype cast of the evaluation, so
  an evaluation in bf16 still names the float32 checkpoint it loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

IDENTITY_KEY = "model_identity"
UNSTRUCTURAL_CONFIG_KEYS = frozenset({
    "transformers_version", "architectures", "auto_map", "custom_pipelines", "dtype", "torch_dtype",
})
"""Config keys (besides those starting with ``_``) that say how a model was saved, not which model it is."""


def config_sha256(config: Any) -> str:
    """SHA-256 of ``config.to_dict()`` as sorted-key JSON, minus :data:`UNSTRUCTURAL_CONFIG_KEYS` and ``_`` keys."""
    data = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in UNSTRUCTURAL_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def weights_sha256(model: Any) -> str:
    """SHA-256 over ``model.state_dict()`` (sorted keys; name, shape and float32 bytes of each tensor)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().to("cpu")
        value = value.float() if value.is_floating_point() else value
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode("utf-8"))
        digest.update(value.reshape(-1).contiguous().numpy().tobytes())  # reshape: 0-d buffers (num_batches_tracked) too
    return digest.hexdigest()


def model_identity(model: Any, source: Optional[Any] = None) -> dict[str, Any]:
    """``{"config_sha256", "weights_sha256", "checkpoint", "preset"}``; ``checkpoint`` is the folder
    (absolute) or Hub id the model was loaded from (``source``, else the model's ``name_or_path``), None for
    a model never loaded from one."""
    if not isinstance(source, (str, os.PathLike)):
        source = getattr(model, "name_or_path", None) or None  # from_pretrained records where it loaded from
    checkpoint = None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        checkpoint = os.path.abspath(path) if os.path.exists(path) else path
    return {"config_sha256": config_sha256(model.config), "weights_sha256": weights_sha256(model),
            "checkpoint": checkpoint, "preset": getattr(model.config, "preset", None)}


def check_identity(recorded: Optional[dict[str, Any]], actual: dict[str, Any], results_file: str) -> None:
    """Raise ``ValueError`` (one line, naming the file and the fix) unless ``recorded`` is ``actual``'s model."""
    fix = f"evaluate this checkpoint (adpretrain evaluate --model {actual.get('checkpoint') or 'CHECKPOINT'} --output DIR) and pass DIR/results.json"
    if not isinstance(recorded, dict) or not recorded.get("config_sha256") or not recorded.get("weights_sha256"):
        raise ValueError(f"results file {results_file} records no model identity (written before identities were recorded, "
                         f"or by hand), so its numbers cannot be attributed to this model: {fix}")
    differing = [what for what, key in (("config", "config_sha256"), ("weights", "weights_sha256")) if recorded[key] != actual[key]]
    if differing:
        source = recorded.get("checkpoint") or "an in-memory model"
        raise ValueError(f"results file {results_file} was computed with another model ({' and '.join(differing)} differ; "
                         f"it records {source}): {fix}")
