"""adpretrain_hf.evaluation.cell: one Table-1 cell (fit, score, metrics) and its None rules.

A fake detector returns known maps and scores, so the cell's metrics can be checked against
sklearn's AUROC and a brute-force PRO sweep (tests/evaluation/helpers.py), and its bookkeeping
(seeding, counts, hook) exactly.
"""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from adpretrain_hf.detectors import TRAINED_METHODS
from adpretrain_hf.evaluation import cell as cell_module
from adpretrain_hf.evaluation.cell import compute_metrics, detector_kwargs, run_cell

from .helpers import brute_force_aupro

N, H, W = 6, 12, 10


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    maps, scores = torch.rand(N, H, W, generator=g), torch.rand(N, generator=g)
    labels = torch.tensor([0.0, 1, 0, 1, 1, 0])
    masks = torch.zeros(N, H, W)
    masks[1, 2:6, 3:7] = 1
    masks[3, 8:, :4] = 1
    masks[4, 0:3, 0:3] = 1
    masks[4, 6:9, 6:9] = 1  # two regions in one image
    return maps, scores, labels, masks


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_against_sklearn_and_a_brute_force_pro(seed):
    maps, scores, labels, masks = _case(seed)
    got = compute_metrics(maps, scores, labels, masks)
    assert got["image_auroc"] == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-9)
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks.numpy().ravel(), maps.numpy().ravel()), abs=1e-6)
    assert got["aupro"] == pytest.approx(brute_force_aupro(maps.numpy(), masks.numpy()), abs=1e-6)


def test_metrics_a_test_set_cannot_define_are_none():
    maps, scores, labels, masks = _case()
    only_normal = compute_metrics(maps[[0, 2]], scores[[0, 2]], labels[[0, 2]], masks[[0, 2]])
    assert only_normal == {"image_auroc": None, "pixel_auroc": None, "aupro": None}
    unmasked = compute_metrics(maps, scores, labels, torch.zeros_like(masks))  # NG images without masks
    assert unmasked["image_auroc"] == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()))
    assert unmasked["pixel_auroc"] is None and unmasked["aupro"] is None


def test_quick_goes_only_to_trained_methods_and_the_protocol_picks_the_variant():
    assert "cflow" in TRAINED_METHODS and "patchcore" not in TRAINED_METHODS
    assert detector_kwargs("cflow", quick=True, batch_size=3) == {"batch_size": 3, "progress": False, "quick": True}
    assert detector_kwargs("padim", quick=True, batch_size=3) == {"variant": "release", "batch_size": 3, "progress": False}
    assert detector_kwargs("padim", False, 3, protocol="package") == {"variant": "package", "batch_size": 3, "progress": False}
    assert detector_kwargs("cflow", quick=False, batch_size=3) == {"batch_size": 3, "progress": False}


def test_protocol_options_are_options_of_the_detectors():
    from adpretrain_hf.detectors import build_detector
    from adpretrain_hf.evaluation.protocols import DETECTOR_PROTOCOLS

    for protocol in DETECTOR_PROTOCOLS.values():
        for method in protocol.detector_options:
            detector = build_detector(method, lambda pixels: [], **detector_kwargs(method, False, 2, protocol.name))
            assert detector.module.variant == protocol.detector_options[method]["variant"]


class FakeDetector:
    """Returns ``outputs`` from predict; records what it was built with and fitted on, and torch's next draw."""

    def __init__(self, outputs, log):
        self.outputs, self.log = outputs, log

    def fit(self, pixel_values):
        self.log["fit_shape"] = tuple(pixel_values.shape)
        self.log["draw"] = torch.rand(1).item()  # seeded by run_cell

    def predict(self, pixel_values):
        self.log["predict_shape"] = tuple(pixel_values.shape)
        return self.outputs


class FakeExtractor:
    feature_kind = "pretrained"


def _run(monkeypatch, outputs, masks, labels, hook=None, seed=3, method="patchcore", protocol="package"):
    log = {}

    def build(method, extractor, **kwargs):
        log["build"] = (method, extractor, kwargs)
        return FakeDetector(outputs, log)

    monkeypatch.setattr(cell_module, "build_detector", build)
    train, test = torch.zeros(4, 3, H, W), torch.zeros(N, 3, H, W)
    result = run_cell("tile", method, FakeExtractor(), train, test, labels, masks, reference_seed=seed,
                      quick=True, batch_size=2, sample_ids=[f"s{i}" for i in range(N)], hook=hook, protocol=protocol)
    return result, log


def test_run_cell_fits_scores_and_reports(monkeypatch):
    maps, scores, labels, masks = _case()
    seen = []
    (result, got_maps, got_scores), log = _run(monkeypatch, (maps.double(), scores.double()), masks, labels, seen.append)
    assert log["build"][0] == "patchcore"
    assert log["build"][2] == {"variant": "package", "image_score": "reweighted", "batch_size": 2, "progress": False}
    assert log["fit_shape"] == (4, 3, H, W) and log["predict_shape"] == (N, 3, H, W)
    assert log["draw"] == torch.rand(1, generator=torch.Generator().manual_seed(3)).item()  # seeded with reference_seed
    assert got_maps.dtype == torch.float32 and torch.equal(got_maps, maps) and torch.equal(got_scores, scores)
    assert result.metrics == compute_metrics(maps, scores, labels, masks)
    assert (result.category, result.method, result.features, result.reference_seed) == ("tile", "patchcore", "pretrained", 3)
    assert (result.num_train, result.num_test) == (4, N) and result.fit_seconds >= 0 and result.predict_seconds >= 0
    (predictions,) = seen
    assert predictions.sample_ids == [f"s{i}" for i in range(N)] and torch.equal(predictions.maps, maps)
    assert set(result.to_json()) >= {"image_auroc", "pixel_auroc", "aupro", "num_train", "fit_seconds"}


def test_maps_of_the_wrong_shape_are_a_clear_error(monkeypatch):
    maps, scores, labels, masks = _case()
    with pytest.raises(RuntimeError, match=r"patchcore returned maps of shape \(6, 6, 5\) for masks \(6, 12, 10\)"):
        _run(monkeypatch, (maps[:, ::2, ::2], scores), masks, labels)


def test_release_protocol_normalises_padim_over_the_whole_test_set(monkeypatch):
    """The release PaDiM step runs once on all N maps (one min and max), before the hook and the metrics."""
    maps, scores, labels, masks = _case()
    maps = maps * 7 + 2
    seen = []
    (result, got_maps, got_scores), log = _run(monkeypatch, (maps, scores), masks, labels, seen.append,
                                                method="padim", protocol="release")
    assert log["build"][2]["variant"] == "release"
    expected = (maps - maps.min()) / (maps.max() - maps.min())
    torch.testing.assert_close(got_maps, expected)
    torch.testing.assert_close(got_scores, expected.flatten(1).amax(dim=1))
    assert float(got_scores.max()) == 1.0 and torch.equal(seen[0].maps, got_maps)
    assert result.metrics == compute_metrics(got_maps, got_scores, labels, masks)
    (_, package_maps, _), _ = _run(monkeypatch, (maps, scores), masks, labels, method="padim", protocol="package")
    assert torch.equal(package_maps, maps)  # the package protocol runs no step
