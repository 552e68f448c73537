"""Shared test setup: offline by construction, small thread pools, tiny models."""

import os

# Nothing in the suite may reach the network; set before transformers/hub import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny tensors: one intra-op thread avoids oversubscription (CI has 2 cores; subprocess tests use the other).
torch.set_num_threads(1)


@pytest.fixture
def tiny_clip_model():
    """A tiny random CLIP-style ADPretrain model in eval mode (64x64 inputs, 4 layers of width 32)."""
    from adpretrain_hf import ADPretrainConfig, ADPretrainModel

    torch.manual_seed(0)
    return ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).eval()


@pytest.fixture(scope="session")
def realiad_root(tmp_path_factory):
    """One object class in the Real-IAD layout: 4 OK and 6 NG samples, one view, 64 px (tiny-clip's
    input). Shared read-only by the training tests; runs write only to their own output folders."""
    from adpretrain_hf.data import generate_dataset

    root = tmp_path_factory.mktemp("realiad")
    generate_dataset(root, layout="realiad", categories=["bottle"], num_normal=4, num_anomalous=6,
                     image_size=64, seed=0, num_views=1, progress=False)
    return root
