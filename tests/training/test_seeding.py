"""Seeding: derived seeds from numpy's SeedSequence, and generator states that survive a JSON round trip."""

import random

import numpy as np
import pytest
import torch

from adpretrain_hf.training.checkpointing import read_json, read_tensors, write_json, write_tensors
from adpretrain_hf.training.seeding import (
    SEED_BITS,
    WORKER_STREAM,
    capture_rng_state,
    derived_rng,
    derived_seed,
    restore_rng_state,
    seed_everything,
    worker_init,
)


def _draws() -> tuple:
    return random.random(), float(np.random.random()), float(torch.rand(()))


def test_derived_seeds_are_seedsequence_words_and_separate_streams():
    for seed, stream, keys in [(0, 1, ()), (123, 2, (4, 5)), (2**40, 3, (7,))]:
        word = np.random.SeedSequence([seed, stream, *keys]).generate_state(2, np.uint64)[0]
        assert derived_seed(seed, stream, *keys) == int(word) // 2 ** (64 - SEED_BITS)
        assert 0 <= derived_seed(seed, stream, *keys) < 2**SEED_BITS
    seeds = {derived_seed(7, stream, key) for stream in (1, 2, 3) for key in range(20)}
    assert len(seeds) == 60  # no two (stream, key) pairs share a seed
    assert derived_rng(7, 2, 3).random() == np.random.default_rng(derived_seed(7, 2, 3)).random()


def test_seed_everything_repeats_all_three_generators():
    seed_everything(11)
    first = _draws()
    seed_everything(11)
    assert _draws() == first
    seed_everything(12)
    assert all(a != b for a, b in zip(_draws(), first))


def test_captured_state_survives_json_and_restores_every_generator(tmp_path):
    seed_everything(3)
    tensors, values = capture_rng_state()
    write_tensors(tmp_path / "r.safetensors", tensors)  # through the checkpoint's own files
    write_json(tmp_path / "r.json", values)
    expected = [_draws() for _ in range(3)]
    seed_everything(4)
    restore_rng_state(read_tensors(tmp_path / "r.safetensors"), read_json(tmp_path / "r.json"))
    assert [_draws() for _ in range(3)] == expected


def test_worker_init_seeds_python_and_numpy_from_torch():
    torch.manual_seed(1000 + 3)  # what a DataLoader worker sees: base_seed + worker_id
    worker_init(3)
    expected_numpy = np.random.RandomState(derived_seed(1003, WORKER_STREAM, 3) % 2**32).random_sample()
    assert random.random() == random.Random(1003).random()
    assert np.random.random() == expected_numpy


@pytest.mark.parametrize("args", [(-1, 1), (5, -2), (5, 1, -3)])
def test_negative_seeds_are_one_line_errors(args):
    with pytest.raises(ValueError, match=r"seed, stream and keys must be non-negative integers, got .*-\d"):
        derived_seed(*args)
