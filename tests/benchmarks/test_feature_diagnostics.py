"""benchmarks/feature_diagnostics.py: its statistics against brute-force numpy / sklearn, and a smoke run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_auc_score

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "feature_diagnostics.py"


@pytest.fixture(scope="module")
def diag():
    spec = importlib.util.spec_from_file_location("feature_diagnostics", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_patch_targets_match_block_fractions(diag):
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, 8, 8, generator=g) > 0.7).float()
    got = diag.patch_targets(masks, (4, 4)).view(2, 4, 4)
    for n in range(2):
        for i in range(4):
            for j in range(4):
                frac = masks[n, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean().item()
                expected = 0 if frac == 0 else (1 if frac > 32 / 256 else -1)
                assert got[n, i, j].item() == expected


def test_layer_stats_vs_bruteforce(diag):
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(3, 6, 5)), rng.normal(size=(4, 6, 5))
    targets = rng.choice([-1, 0, 1], size=24)
    stats = diag.layer_stats(torch.from_numpy(train).float(), torch.from_numpy(test).float(),
                             torch.from_numpy(targets), torch.device("cpu"))
    q, keep = test.reshape(24, 5), targets != -1
    q, y = q[keep], targets[keep]
    norms = np.linalg.norm(q, axis=1)
    nn = cdist(q, train.reshape(18, 5)).min(axis=1)
    assert stats["norm_auroc"] == pytest.approx(roc_auc_score(y, norms), abs=1e-6)
    assert stats["nn_auroc"] == pytest.approx(roc_auc_score(y, nn), abs=1e-6)
    assert stats["nn_normal_mean"] == pytest.approx(nn[y == 0].mean(), rel=1e-5)
    assert stats["nn_normal_std"] == pytest.approx(nn[y == 0].std(), rel=1e-4)
    assert stats["norm_anomalous_mean"] == pytest.approx(norms[y == 1].mean(), rel=1e-5)
    assert stats["num_normal_patches"] == int((y == 0).sum())


def test_smoke_run_on_synthetic_folder(diag, tmp_path):
    from adpretrain_hf.data import generate_dataset

    root = tmp_path / "data"
    generate_dataset(root, layout="mvtec", categories=["tile"], num_normal=4, num_anomalous=2, image_size=64, seed=0, progress=False)
    out = tmp_path / "diag.json"
    payload = diag.main(["--preset", "tiny-cnn", "--backbone-weights", "none", "--data", str(root), "--shots", "2",
                         "--max-train", "2", "--device", "cpu", "--no-progress", "--output", str(out)])
    assert json.loads(out.read_text())["tapped_layers"] == payload["tapped_layers"] == [2, 3, 4]
    rows = payload["per_category"]["tile"]["rows"]
    assert len(rows) == 3 * 3
    for layer in range(3):
        # The bank holds only the references, whose residuals are zero: NN distance == norm.
        residual = rows[f"{layer}/residual"]
        assert math.isclose(residual["nn_normal_mean"], residual["norm_normal_mean"], rel_tol=1e-4)
        if residual["norm_auroc"] is None:  # no patch of this grid is anomalous enough
            assert residual["nn_auroc"] is None and residual["num_anomalous_patches"] == 0
        else:
            assert math.isclose(residual["nn_auroc"], residual["norm_auroc"], abs_tol=1e-6)
            assert 0.0 <= rows[f"{layer}/backbone"]["nn_auroc"] <= 1.0
    assert rows["0/residual"]["nn_auroc"] is not None  # the finest grid has anomalous patches
