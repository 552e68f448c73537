"""Checkpoint plumbing around ``save_pretrained`` / ``from_pretrained``.

- Before loading, the checkpoint's tensor shapes are compared with the shapes its config
  would build (on the meta device, no memory), so a mismatch fails with the name of the
  layer instead of a size error from deep inside torch.
- The structural config fields the weights were saved with (``STRUCTURAL_FIELDS``) are kept
  in the safetensors metadata; a config that differs is refused at load, naming the field.
- Unreadable (truncated, corrupt) weight or bank files are named in the error.
- Extras: the optional stored reference bank, the image processor config, and the
  backbone weights when the checkpoint does not bundle them.

Part of the remote-code bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .atomic_io_adpretrain import missing_folder_hint, replace_folder
from .image_processing_adpretrain import (
    PROCESSOR_FILE,
    SAVED_PROCESSOR_ATTR,
    hub_download_kwargs,
    load_saved_processor,
    processor_for,
    resolve_file,
)
from .reference_bank_adpretrain import ReferenceBank
from .tasks_adpretrain import ANOMALY_FEATURES_TASK, save_task_pipeline

REFERENCE_BANK_FILE = "reference_bank.safetensors"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
STRUCTURE_METADATA_KEY = "adpretrain_structure"  # safetensors metadata: JSON of config.weights_structure()
_HEADER_LENGTH_BYTES = 8  # safetensors: little-endian u64 header length, then the JSON header
_HEADER_ALIGNMENT = 8
_COPY_CHUNK_BYTES = 16 * 1024 * 1024


def _weight_files(path_or_id, kwargs: dict) -> Optional[list[str]]:
    """Local paths of the checkpoint's safetensors weight files (one, or every shard); None when absent."""
    files = []
    single = resolve_file(path_or_id, WEIGHTS_FILE, kwargs)
    if single:
        files = [single]
    else:
        index = resolve_file(path_or_id, WEIGHTS_INDEX_FILE, kwargs)
        if not index:
            return None
        with open(index) as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        files = [resolve_file(path_or_id, shard, kwargs) for shard in shards]
        if not all(files):
            return None
    return files


def _read_header(file: str) -> tuple[dict[str, tuple], dict[str, str]]:
    """Tensor shapes and metadata of one safetensors file; a corrupt file is named in the error."""
    try:
        with safe_open(file, framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            return shapes, dict(handle.metadata() or {})
    except Exception as err:  # SafetensorError, OSError: truncated or not a safetensors file
        raise ValueError(
            f"weights file {file} is unreadable ({type(err).__name__}: {err}): it is truncated or corrupt; "
            "save or download the checkpoint again"
        ) from err


def _structure_metadata(config) -> dict[str, str]:
    return {STRUCTURE_METADATA_KEY: json.dumps(config.weights_structure(), sort_keys=True)}


@contextmanager
def structure_in_weight_files(config) -> Iterator[None]:
    """While transformers saves: its safetensors writer adds the structure metadata, so the
    weights are written once. :func:`add_structure_metadata` checks the result afterwards and
    rewrites any file that lacks it (another transformers version, concurrent saves)."""
    from transformers import modeling_utils

    original = getattr(modeling_utils, "safe_save_file", None)
    if original is None:
        yield
        return
    extra = _structure_metadata(config)

    def save_with_structure(tensors, filename, metadata=None):
        return original(tensors, filename, metadata={**(metadata or {}), **extra})

    modeling_utils.safe_save_file = save_with_structure
    try:
        yield
    finally:
        modeling_utils.safe_save_file = original


def add_structure_metadata(folder: str, config) -> None:
    """Make sure every weight file in ``folder`` records ``config.weights_structure()``.

    A file that lacks it gets a new header; the tensor bytes are streamed (offsets are relative
    to the data), nothing is loaded.
    """
    extra = _structure_metadata(config)
    for file in _weight_files(folder, {}) or []:
        if _read_header(file)[1].get(STRUCTURE_METADATA_KEY) == extra[STRUCTURE_METADATA_KEY]:
            continue
        with open(file, "rb") as source:
            (length,) = struct.unpack("<Q", source.read(_HEADER_LENGTH_BYTES))
            header = json.loads(source.read(length))
            header["__metadata__"] = {**header.get("__metadata__", {}), **extra}
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % _HEADER_ALIGNMENT)
            with open(file + ".partial", "wb") as target:
                target.write(struct.pack("<Q", len(raw)))
                target.write(raw)
                shutil.copyfileobj(source, target, _COPY_CHUNK_BYTES)
        os.replace(file + ".partial", file)


def structure_mismatch(saved: Optional[dict[str, Any]], config) -> Optional[str]:
    """``"field: config.json says X, the weights were saved with Y"`` for the first differing field."""
    if not saved:
        return None
    current = json.loads(json.dumps(config.weights_structure()))
    for field, value in saved.items():
        if field in current and current[field] != value and not (field == "feature_dims" and current[field] is None):
            return f"{field}: the config says {current[field]!r} but the weights were saved with {value!r}"
    return None


def _checkpoint_header(path_or_id, kwargs: dict) -> Optional[tuple[dict[str, tuple], Optional[dict]]]:
    """``(shapes, saved structure or None)`` over all weight files; None when there are none."""
    files = _weight_files(path_or_id, kwargs)
    if files is None:
        return None
    shapes, structure = {}, None
    for file in files:
        file_shapes, metadata = _read_header(file)
        shapes.update(file_shapes)
        if STRUCTURE_METADATA_KEY in metadata:
            structure = json.loads(metadata[STRUCTURE_METADATA_KEY])
    return shapes, structure


def _describe(key: str, config) -> str:
    parts = key.split(".")
    if parts[0] in ("projectors", "centers") and len(parts) > 1:
        index = int(parts[1]) if parts[0] == "projectors" else int(parts[1].split("_")[-1]) if parts[1].startswith("layer_") else None
        if index is not None and index < len(config.layers):
            return f"projector of tapped layer #{index} (backbone block {config.layers[index]})"
    return "backbone" if parts[0] == "backbone" else parts[0]


def check_checkpoint_matches_config(model_class, path_or_id, kwargs: dict) -> None:
    """Raise ``ValueError`` naming the field or layer whose weights do not fit the config.

    Order: a config that cannot even build a model, then tensor shapes (naming the layer), then
    the structural fields recorded at save time (naming the field and both values).
    """
    hint = missing_folder_hint(str(path_or_id))
    if hint:
        raise ValueError(hint)
    header = _checkpoint_header(path_or_id, kwargs)
    if header is None:
        return  # no safetensors weights found: let transformers report what is missing
    shapes, saved = header
    config = kwargs.get("config")
    if config is None or isinstance(config, (str, os.PathLike)):
        config = model_class.config_class.from_pretrained(config or path_or_id, **hub_download_kwargs(kwargs))
        overrides = {k: kwargs[k] for k in config.weights_structure() if k in kwargs}
        if overrides:  # from_pretrained(dir, layers=...) overrides the saved config the same way
            config = model_class.config_class(**{**config.to_dict(), **overrides})
    mismatch = structure_mismatch(saved, config)
    suffix = f" ({mismatch})" if mismatch else ""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
    except Exception as err:  # e.g. a backbone_family whose adapter cannot read this backbone_config
        raise ValueError(
            f"the config of checkpoint {path_or_id} does not build a model{suffix or ''}: {type(err).__name__}: {err}. "
            "Load it with the config it was saved with"
        ) from err
    for key, shape in shapes.items():
        if key in expected and expected[key] != shape:
            raise ValueError(
                f"checkpoint {path_or_id} does not match its config at {_describe(key, config)}: "
                f"weight {key!r} has shape {shape} but the config builds {expected[key]}{suffix}. "
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
    mismatch = structure_mismatch(saved, config)  # feature_dims is filled now that a model was built
    if mismatch:
        raise ValueError(
            f"checkpoint {path_or_id} was saved with another model structure: {mismatch}. "
            "Load it with the config it was saved with (restore that field in config.json, or drop the override)"
        )


def save_extras(model, save_directory, save_references: bool) -> None:
    """Write the structure metadata, the reference bank (when asked) and the image processor config.

    ``save_directory`` is a fresh folder (the atomic save's temporary), so nothing stale is kept.
    The processor is ``processor_for(model)``: the one the model was loaded with, so an edited
    ``preprocessor_config.json`` survives a load -> save round trip.
    """
    add_structure_metadata(save_directory, model.config)
    if save_references:
        bank = model.reference_bank
        if bank is None:
            raise ValueError("save_references=True but the model holds no reference bank: call set_references() first")
        save_file({f"layer_{i}": b.detach().contiguous().cpu() for i, b in enumerate(bank.layers)}, os.path.join(save_directory, REFERENCE_BANK_FILE))
    processor_for(model, warn_missing=False).save_pretrained(save_directory)
    save_task_pipeline(save_directory, ANOMALY_FEATURES_TASK)  # the pipeline code registration serves


def is_foreign(name: str) -> bool:
    """Entries of a checkpoint folder that ``save_pretrained`` does not own, kept across re-saves
    (a training run's ``logs/``, ``checkpoints/``, ``metrics.jsonl``, a ``results.json``).

    Owned, so dropped unless the new save writes them again: config and processor JSON, weights
    and bank (``*.safetensors``, the shard index), remote code (``*.py``), the model card.
    """
    owned = ("config.json", PROCESSOR_FILE, WEIGHTS_INDEX_FILE, "README.md", "__pycache__")
    return not (name in owned or name.endswith((".safetensors", ".py")))


PUSH_KWARGS = ("token", "private", "commit_message", "revision")  # save_pretrained kwargs that go to push_to_hub


def save_folder(model, save_directory, write, push_to_hub: bool, kwargs: dict) -> None:
    """``write(folder)`` into a fresh folder swapped in for ``save_directory`` (foreign entries kept),
    then, when asked, push the model (transformers' PushToHubMixin uploads its own fresh save).
    One rule for the feature model and the detector folder."""
    replace_folder(save_directory, write, keep=is_foreign)
    if push_to_hub:
        hub_kwargs = {k: kwargs[k] for k in PUSH_KWARGS if k in kwargs}
        model.push_to_hub(kwargs.get("repo_id", os.path.basename(os.path.abspath(save_directory))), **hub_kwargs)


def keep_saved_processor(model, path_or_id, kwargs: dict) -> None:
    """Remember the checkpoint's ``preprocessor_config.json`` (fetched like the weights) for ``processor_for``."""
    setattr(model, SAVED_PROCESSOR_ATTR, load_saved_processor(path_or_id, kwargs))


def load_extras(model, path_or_id, kwargs: dict) -> None:
    """After loading: keep the saved processor; fetch un-bundled backbone weights; restore a stored reference bank."""
    keep_saved_processor(model, path_or_id, kwargs)
    if not model.config.bundle_backbone:
        model.load_backbone_weights()
    bank_file = resolve_file(path_or_id, REFERENCE_BANK_FILE, kwargs)
    if bank_file:
        try:
            tensors = load_file(bank_file)
        except Exception as err:  # SafetensorError / OSError: truncated or corrupt
            raise ValueError(
                f"reference bank file {bank_file} is unreadable ({type(err).__name__}: {err}): "
                "it is truncated or corrupt; delete it (and pass references) or save the model again"
            ) from err
        dtype = next(model.projectors.parameters()).dtype
        model.set_reference_bank(ReferenceBank([tensors[f"layer_{i}"].to(dtype) for i in range(len(tensors))]))
        model.bank_from_checkpoint = True
