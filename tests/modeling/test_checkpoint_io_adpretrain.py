"""Checkpoint plumbing: structure metadata written into safetensors headers without touching the
tensor bytes, mismatches named by field, unreadable files named, and which folder entries are owned."""

import json
import struct
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adpretrain_hf import ADPretrainModel
from adpretrain_hf.modeling.checkpoint_io_adpretrain import (
    STRUCTURE_METADATA_KEY,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    add_structure_metadata,
    check_checkpoint_matches_config,
    is_foreign,
    structure_mismatch,
)

STRUCTURE = {"layers": [1, 2], "projector_type": "lkv", "feature_dims": [32, 32]}
CONFIG = SimpleNamespace(weights_structure=lambda: dict(STRUCTURE))


def _tensors(seed):
    generator = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 5, generator=generator), "b": torch.arange(7, dtype=torch.int64) + seed}


def _header_length(path) -> int:
    with open(path, "rb") as handle:
        return struct.unpack("<Q", handle.read(8))[0]


def test_structure_metadata_is_added_to_every_shard_and_the_tensors_kept(tmp_path):
    shards = {"model-00001-of-00002.safetensors": _tensors(0), "model-00002-of-00002.safetensors": _tensors(1)}
    for name, tensors in shards.items():
        save_file(tensors, str(tmp_path / name), metadata={"format": "pt"})
    weight_map = {f"{name}/{key}": name for name, tensors in shards.items() for key in tensors}
    (tmp_path / WEIGHTS_INDEX_FILE).write_text(json.dumps({"weight_map": weight_map}))
    add_structure_metadata(str(tmp_path), CONFIG)
    for name, tensors in shards.items():
        with safe_open(str(tmp_path / name), framework="pt") as handle:
            metadata = handle.metadata()
        assert metadata["format"] == "pt" and json.loads(metadata[STRUCTURE_METADATA_KEY]) == STRUCTURE
        assert _header_length(tmp_path / name) % 8 == 0  # safetensors' alignment of the data
        loaded = load_file(str(tmp_path / name))
        assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    before = (tmp_path / next(iter(shards))).read_bytes()
    add_structure_metadata(str(tmp_path), CONFIG)  # already recorded: nothing rewritten
    assert (tmp_path / next(iter(shards))).read_bytes() == before


def test_structure_mismatch_names_the_first_differing_field():
    assert structure_mismatch(None, CONFIG) is None and structure_mismatch(dict(STRUCTURE), CONFIG) is None
    assert structure_mismatch({"layers": [1, 3], "unknown_field": 1}, CONFIG) == (
        "layers: the config says [1, 2] but the weights were saved with [1, 3]")
    unbuilt = SimpleNamespace(weights_structure=lambda: {**STRUCTURE, "feature_dims": None})
    assert structure_mismatch({"feature_dims": [64, 64]}, unbuilt) is None  # filled in once a model is built


def test_an_unreadable_weights_file_is_named(tmp_path):
    save_file(_tensors(0), str(tmp_path / WEIGHTS_FILE))
    data = (tmp_path / WEIGHTS_FILE).read_bytes()
    (tmp_path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"weights file .*model\.safetensors is unreadable .*save or download the checkpoint again"):
        add_structure_metadata(str(tmp_path), CONFIG)


def test_an_overridden_structure_is_refused_naming_the_layer(tiny_clip_model, tmp_path):
    tiny_clip_model.save_pretrained(tmp_path)
    check_checkpoint_matches_config(ADPretrainModel, str(tmp_path), {})  # as saved: accepted
    with pytest.raises(ValueError, match=r"does not match its config at projector of tapped layer #0 \(backbone block 1\)"
                       r".*num_learnable_references: the config says 32 but the weights were saved with 64"):
        check_checkpoint_matches_config(ADPretrainModel, str(tmp_path), {"num_learnable_references": 32})
    with pytest.raises(ValueError, match=r"saved with another model structure: matching_metric: the config says 'l2'"):
        check_checkpoint_matches_config(ADPretrainModel, str(tmp_path), {"matching_metric": "l2"})  # same shapes
    (tmp_path / WEIGHTS_FILE).unlink()
    check_checkpoint_matches_config(ADPretrainModel, str(tmp_path), {})  # no weights: transformers reports it


def test_owned_and_foreign_entries():
    owned = ["config.json", "preprocessor_config.json", WEIGHTS_INDEX_FILE, "README.md", "__pycache__",
             "model.safetensors", "reference_bank.safetensors", "modeling_adpretrain.py"]
    foreign = ["logs", "checkpoints", "metrics.jsonl", "results.json", "notes.txt"]
    assert not any(is_foreign(name) for name in owned) and all(is_foreign(name) for name in foreign)
