"""Every source of randomness of a pretraining run, derived from ``args.seed``.

Three kinds of randomness, three treatments:

* *Derived* streams (augmentation of a row, worker seeds) get their own generator seeded
  from ``(seed, stream, keys...)`` with :func:`derived_seed`. They depend on where they are
  used (epoch, row, worker), not on what ran before, so they are the same with any number of
  dataloader workers and after a resume, with nothing to save.
* *Global* generators (python ``random``, numpy's global state, torch CPU/CUDA) are seeded
  once and their states are saved with every checkpoint (:func:`capture_rng_state`,
  :func:`restore_rng_state`), as tensors (safetensors) plus JSON: never pickle.
* Reference draws use the trainer's own generator (``Pretrainer.rng``, seeded from
  ``seed + process_index``), whose state is saved with every checkpoint (``checkpointing.py``).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

# Stream ids keep derived generators apart (any distinct constants).
AUGMENT_STREAM = 1
WORKER_STREAM = 4
SEED_BITS = 63  # derived seeds are non-negative int64s (torch.manual_seed and numpy take them)


def derived_seed(seed: int, stream: int, *keys: int) -> int:
    """A seed that depends only on ``(seed, stream, keys)`` (numpy's SeedSequence hashing)."""
    entropy = [int(seed), int(stream), *(int(k) for k in keys)]
    if min(entropy) < 0:
        raise ValueError(f"seed, stream and keys must be non-negative integers, got {entropy}: pass a seed >= 0")
    words = np.random.SeedSequence(entropy).generate_state(2, np.uint64)
    return int(words[0]) >> (64 - SEED_BITS)


def derived_rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """A numpy generator for one use (one row's augmentation in one epoch)."""
    return np.random.default_rng(derived_seed(seed, stream, *keys))


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global state and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(derived_seed(seed, 0) % (2**32))
    torch.manual_seed(seed)


def worker_init(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: seed a worker's python/numpy state from torch's.

    torch gives each worker ``base_seed + worker_id`` (``base_seed`` drawn from the loader's
    seeded generator); this extends it to ``random`` and numpy for third-party transforms.
    """
    base = torch.initial_seed()
    random.seed(base)
    np.random.seed(derived_seed(base, WORKER_STREAM, worker_id) % (2**32))


# -- saving and restoring the global generators (no pickle) ---------------------------
def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, json_values)`` holding the states of python, numpy (global) and torch generators."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {
        "rng/torch_cpu": torch.get_rng_state(),
        "rng/numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
    }
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda_{index}"] = state
    values = {
        "python": {"version": version, "words": list(words), "gauss": gauss},
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    return tensors, values


def restore_rng_state(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    python = values["python"]
    random.setstate((python["version"], tuple(python["words"]), python["gauss"]))
    numpy = values["numpy"]
    keys = tensors["rng/numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(tensors["rng/torch_cpu"])
    cuda_keys = sorted((k for k in tensors if k.startswith("rng/cuda_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    cuda = [tensors[k] for k in cuda_keys]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
