"""Checkpoint plumbing around ``save_pretrained`` / ``from_pretrained``.

- Before loading, the checkpoint's tensor shapes are compared with the shapes its config
  would build (on the meta device, no memory), so a mismatch fails with the name of the
  layer instead of a size error from deep inside torch.
- Extras: the optional stored reference bank, the image processor config, and the
  backbone weights when the checkpoint does not bundle them.

Part of the remote-code bundle.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

REFERENCE_BANK_FILE = "reference_bank.safetensors"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def _resolve(path_or_id, filename: str, kwargs: dict) -> Optional[str]:
    """Local path of ``filename`` in a folder or a (cached) Hub repo; None when absent."""
    if os.path.isdir(str(path_or_id)):
        candidate = os.path.join(str(path_or_id), kwargs.get("subfolder") or "", filename)
        return candidate if os.path.isfile(candidate) else None
    from transformers.utils import cached_file

    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    return cached_file(
        path_or_id, filename, _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False, **hub_kwargs,
    )


def _checkpoint_shapes(path_or_id, kwargs: dict) -> Optional[dict[str, tuple]]:
    files = []
    single = _resolve(path_or_id, WEIGHTS_FILE, kwargs)
    if single:
        files = [single]
    else:
        index = _resolve(path_or_id, WEIGHTS_INDEX_FILE, kwargs)
        if not index:
            return None
        with open(index) as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        files = [_resolve(path_or_id, shard, kwargs) for shard in shards]
        if not all(files):
            return None
    shapes = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _describe(key: str, config) -> str:
    parts = key.split(".")
    if parts[0] in ("projectors", "centers") and len(parts) > 1:
        index = int(parts[1]) if parts[0] == "projectors" else int(parts[1].split("_")[-1]) if parts[1].startswith("layer_") else None
        if index is not None and index < len(config.layers):
            return f"projector of tapped layer #{index} (backbone block {config.layers[index]})"
    return "backbone" if parts[0] == "backbone" else parts[0]


def check_checkpoint_matches_config(model_class, path_or_id, kwargs: dict) -> None:
    """Raise ``ValueError`` naming the first layer whose weights do not fit the config."""
    shapes = _checkpoint_shapes(path_or_id, kwargs)
    if shapes is None:
        return  # no safetensors weights found: let transformers report what is missing
    config = kwargs.get("config")
    if config is None or isinstance(config, (str, os.PathLike)):
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        config = model_class.config_class.from_pretrained(config or path_or_id, **hub_kwargs)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
    for key, shape in shapes.items():
        if key in expected and expected[key] != shape:
            raise ValueError(
                f"checkpoint {path_or_id} does not match its config at {_describe(key, config)}: "
                f"weight {key!r} has shape {shape} but the config builds {expected[key]}. "
                "Load it with the config it was saved with (don't override layers/feature sizes/projector settings)."
            )
    missing_projectors = [k for k in expected if k.startswith("projectors.") and k not in shapes]
    if missing_projectors:
        raise ValueError(
            f"checkpoint {path_or_id} lacks projector weights its config needs, e.g. {missing_projectors[0]!r} "
            f"({_describe(missing_projectors[0], config)}): was it saved with a different number of layers or projector_type?"
        )
    if config.bundle_backbone and not any(k.startswith("backbone.") for k in shapes):
        raise ValueError(
            f"checkpoint {path_or_id} holds no backbone weights but its config says bundle_backbone=True: "
            "set bundle_backbone=False and backbone_id=<id or folder> to load them from elsewhere"
        )


def save_extras(model, save_directory, save_references: bool) -> None:
    """Write the reference bank (when asked) and the image processor config beside the weights."""
    if save_references:
        bank = model.reference_bank
        if bank is None:
            raise ValueError("save_references=True but the model holds no reference bank: call set_references() first")
        save_file({f"layer_{i}": b.detach().contiguous().cpu() for i, b in enumerate(bank)}, os.path.join(save_directory, REFERENCE_BANK_FILE))
    try:
        from .image_processing_adpretrain import ADPretrainImageProcessor
    except ImportError:  # processor file absent in an old bundle
        return
    if not os.path.isfile(os.path.join(save_directory, "preprocessor_config.json")):
        ADPretrainImageProcessor.from_adpretrain_config(model.config).save_pretrained(save_directory)
    save_custom_pipeline(save_directory)


def save_custom_pipeline(save_directory) -> None:
    """Make the checkpoint a remote-code pipeline, as ``Pipeline.save_pretrained`` would: copy
    ``pipeline_anomaly_features.py`` (and its relative imports) and add ``custom_pipelines`` to
    config.json, so ``pipeline("anomaly-features", model=dir_or_id, trust_remote_code=True)``
    works where adpretrain_hf is not installed."""
    try:
        from .pipeline_anomaly_features import AnomalyFeaturesPipeline, custom_pipeline_entry
    except ImportError:  # pipeline file absent in an old bundle
        return
    from transformers.dynamic_module_utils import custom_object_save

    config_file = os.path.join(save_directory, "config.json")
    if not os.path.isfile(config_file):
        return
    custom_object_save(AnomalyFeaturesPipeline, save_directory)
    with open(config_file, encoding="utf-8") as handle:
        config = json.load(handle)
    config["custom_pipelines"] = {**config.get("custom_pipelines", {}), **custom_pipeline_entry()}
    with open(config_file, "w", encoding="utf-8") as handle:  # PretrainedConfig's own JSON layout
        handle.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_extras(model, path_or_id, kwargs: dict) -> None:
    """After loading: fetch un-bundled backbone weights; restore a stored reference bank."""
    if not model.config.bundle_backbone:
        model.load_backbone_weights()
    bank_file = _resolve(path_or_id, REFERENCE_BANK_FILE, kwargs)
    if bank_file:
        tensors = load_file(bank_file)
        dtype = next(model.projectors.parameters()).dtype
        model.set_reference_bank([tensors[f"layer_{i}"].to(dtype) for i in range(len(tensors))])
