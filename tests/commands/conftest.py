"""The deploy commands' workspace: a tiny checkpoint and image folders (helpers.make_workspace) and an uncalibrated FeatureNorm folder (module-scoped)."""

import pytest

from adpretrain_hf import ADPretrainModel
from adpretrain_hf.deployment import fit_detector

from .helpers import make_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def featurenorm(workspace):
    """An uncalibrated FeatureNorm detector folder (no val set: no thresholds)."""
    model = ADPretrainModel.from_pretrained(workspace / "ckpt")
    train = sorted((workspace / "train").glob("*.png"))
    fit_detector(model, "featurenorm", [str(p) for p in train], progress=False).save_pretrained(workspace / "fn")
    return workspace / "fn"

