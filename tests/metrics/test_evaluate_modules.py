"""load_metric: the `evaluate` modules offline, against the plain functions."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
import torch

from adpretrain_hf.metrics import METRIC_NAMES, aupro, load_metric, metric_module_path, pixel_auroc
from tests.metrics.slow_references import blob_masks, noisy_maps, slow_auroc


# --------------------------------------------------------------------------- evaluate modules
@pytest.fixture(scope="module")
def offline_evaluate(tmp_path_factory):
    """evaluate with HF_EVALUATE_OFFLINE=1, every cache under tmp, and no socket allowed.

    evaluate reads its environment once at import, so besides the variables the values it
    derived from them (``evaluate.config``) are patched too. Its dynamic-module package is
    cached in sys.modules per cache directory, so it is isolated and restored afterwards.
    """
    root = tmp_path_factory.mktemp("hf")
    env = {
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HOME": str(root),
        "HF_MODULES_CACHE": str(root / "modules"),
        "HF_METRICS_CACHE": str(root / "metrics"),
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
    }
    saved_path = list(sys.path)
    cached_names = [k for k in sys.modules if k.startswith("evaluate_modules")]
    saved_modules = {k: sys.modules.pop(k) for k in cached_names}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        import evaluate.config as cfg

        mp.setattr(cfg, "HF_EVALUATE_OFFLINE", True)
        mp.setattr(cfg, "HF_UPDATE_DOWNLOAD_COUNTS", False)
        mp.setattr(cfg, "HF_CACHE_HOME", str(root))
        for name, sub in [
            ("HF_MODULES_CACHE", "modules"),
            ("HF_METRICS_CACHE", "metrics"),
            ("HF_EVALUATE_CACHE", "evaluate"),
            ("DOWNLOADED_EVALUATE_PATH", "evaluate/downloads"),
            ("EXTRACTED_EVALUATE_PATH", "evaluate/downloads/extracted"),
        ]:
            mp.setattr(cfg, name, root / sub)

        def no_network(*args, **kwargs):
            raise AssertionError("a metric tried to open a network connection")

        mp.setattr(socket.socket, "connect", no_network)
        yield root
    sys.path[:] = saved_path
    for key in [k for k in sys.modules if k.startswith("evaluate_modules")]:
        del sys.modules[key]
    sys.modules.update(saved_modules)


def test_load_metric_matches_plain_functions_offline(offline_evaluate):
    import adpretrain_hf.metrics as plain

    rng = np.random.default_rng(11)
    masks = blob_masks(rng, n=5, size=12)
    maps = noisy_maps(rng, masks).astype(np.float32)  # evaluate stores float32

    metric = load_metric("aupro")
    for start in range(0, 5, 2):  # accumulate like an evaluation loop
        metric.add_batch(predictions=maps[start:start + 2], references=masks[start:start + 2])
    assert metric.compute()["aupro"] == pytest.approx(aupro(maps, masks), abs=1e-12)
    release = load_metric("aupro").compute(
        predictions=torch.from_numpy(maps), references=torch.from_numpy(masks), variant="release"
    )
    assert release["aupro"] == pytest.approx(aupro(maps, masks, variant="release"), abs=1e-12)

    pixel = load_metric("pixel_auroc").compute(predictions=maps, references=masks)
    assert pixel["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks), abs=1e-12)

    scores, labels = rng.random(12), rng.integers(0, 2, 12)
    image = load_metric("image_auroc").compute(predictions=scores, references=labels)
    assert image["image_auroc"] == pytest.approx(slow_auroc(scores, labels), abs=1e-12)

    # One implementation: the cached module calls the package's own function object.
    module = sys.modules[type(metric).__module__]
    assert module.aupro is plain.aupro
    # Everything was written under the temporary HF home, nothing to ~/.cache.
    cached = list((offline_evaluate / "modules").rglob("aupro.py"))
    assert cached and cached[0].read_text() == metric_module_path("aupro").read_text()


def test_evaluate_module_reports_plain_errors(offline_evaluate):
    metric = load_metric("aupro")
    with pytest.raises(ValueError, match="at least one anomalous pixel"):
        metric.compute(predictions=np.ones((2, 3, 3)), references=np.zeros((2, 3, 3)))


def test_load_metric_unknown_name():
    with pytest.raises(ValueError, match="one of"):
        load_metric("f1")
    assert all(metric_module_path(name).is_file() for name in METRIC_NAMES)
