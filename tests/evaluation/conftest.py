"""Shared fixtures: a tiny MVTec-style dataset (two categories) and the random tiny-clip model (module-scoped)."""

import pytest
import torch

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.data import generate_dataset

from .helpers import CATEGORIES, NUM_ANOMALOUS, NUM_NORMAL


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    generate_dataset(root, layout="mvtec", categories=CATEGORIES, num_normal=NUM_NORMAL, num_anomalous=NUM_ANOMALOUS,
                     image_size=64, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).eval()
