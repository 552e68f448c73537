"""One backbone pass per image: the evaluation's feature cache (issue 14).

Checked against independent computations: the same run without the cache (a pass per
request, the old behaviour) gives identical numbers and maps, in memory and spilled to
disk; a spy on the backbone's forward counts the images it sees, compared with the number
of distinct files on disk; residual features are recomputed here with an explicit nearest
neighbour search.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adpretrain_hf.cli import main as cli_main
from adpretrain_hf.data import generate_dataset
from adpretrain_hf.evaluation import EvaluationConfig, evaluate_model
from adpretrain_hf.evaluation.image_feature_cache import DirectSource, FeatureCache, shared_bank
from adpretrain_hf.extractor import ModelFeatureExtractor
from adpretrain_hf.modeling.reference_bank_adpretrain import ReferenceBank

NUM_NORMAL, NUM_ANOMALOUS = 5, 2  # one category: 5 train normals; test = 2 anomalous + 2 normal
KINDS = "backbone,residual,pretrained"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec-cache")
    generate_dataset(root, layout="mvtec", categories=["tile"], num_normal=NUM_NORMAL, num_anomalous=NUM_ANOMALOUS,
                     image_size=64, seed=1, progress=False)
    return root


def _distinct_files(root: Path) -> int:
    """Images on disk (train + test, masks excluded): what the backbone should see once each."""
    return sum(1 for p in root.rglob("*.png") if "ground_truth" not in p.parts)


def _run(model, root, **kwargs):
    predictions = []
    settings = dict(methods=("featurenorm", "padim"), shots=2, reference_seeds=2, reference_strategy="random",
                    kinds=KINDS, batch_size=3, num_overlays=0, progress=False, print_markdown=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        payload = evaluate_model(model, root, prediction_hook=predictions.append, **{**settings, **kwargs})
    return payload, predictions


@pytest.fixture
def backbone_spy(model, monkeypatch):
    """Counts the images every backbone call receives."""
    seen: list[int] = []
    original = model.backbone.forward
    monkeypatch.setattr(model.backbone, "forward", lambda x, *a, **k: seen.append(x.shape[0]) or original(x, *a, **k))
    return seen


def test_cache_on_off_and_spilled_give_identical_results(model, root, tmp_path):
    off, off_preds = _run(model, root, feature_cache=False)
    memory, memory_preds = _run(model, root)
    disk, disk_preds = _run(model, root, feature_cache_mb=0)
    half = memory["feature_passes"]["tile"]["memory_mb"] / 2  # half in memory, half spilled
    tiny, tiny_preds = _run(model, root, feature_cache_mb=half, feature_cache_dir=str(tmp_path))
    assert len(off_preds) == 2 * (1 + 2 * 2)  # methods x (backbone once + 2 seeds x residual/pretrained)
    for payload, preds in ((memory, memory_preds), (disk, disk_preds), (tiny, tiny_preds)):
        assert payload["results"] == off["results"]
        for a, b in zip(preds, off_preds):
            assert (a.method, a.features, a.reference_seed) == (b.method, b.features, b.reference_seed)
            assert torch.equal(a.maps, b.maps) and torch.equal(a.scores, b.scores)
    stats = {name: p["feature_passes"]["tile"] for name, p in (("memory", memory), ("disk", disk), ("tiny", tiny))}
    assert stats["memory"]["disk_mb"] == 0 and stats["memory"]["memory_mb"] > 0
    assert stats["disk"]["memory_mb"] == 0 and stats["disk"]["spill_files"] > 0
    assert 0 < stats["tiny"]["memory_mb"] <= half and stats["tiny"]["disk_mb"] > 0
    assert stats["tiny"]["memory_mb"] + stats["tiny"]["disk_mb"] == pytest.approx(stats["memory"]["memory_mb"], abs=0.01)
    assert not list(tmp_path.iterdir())  # the spill folder is removed after the category
    # w/ and residual differ from w/o (the kinds are really different features)
    by_kind = {p.features: p.maps for p in off_preds if p.method == "padim" and p.reference_seed == 0}
    assert not torch.equal(by_kind["residual"], by_kind["backbone"]) and not torch.equal(by_kind["residual"], by_kind["pretrained"])


@pytest.mark.parametrize("strategy", ["random", "kmeans", "aligned"])
def test_backbone_sees_each_distinct_image_once(model, root, backbone_spy, strategy):
    payload, _ = _run(model, root, reference_strategy=strategy)
    distinct = _distinct_files(root)
    assert distinct == NUM_NORMAL + NUM_NORMAL // 2 + NUM_ANOMALOUS  # generator's layout: train + test good + defects
    assert sum(backbone_spy) == distinct
    assert payload["feature_passes"]["tile"]["backbone_images"] == distinct == payload["feature_passes"]["tile"]["distinct_images"]
    backbone_spy.clear()
    off, _ = _run(model, root, reference_strategy=strategy, feature_cache=False)
    assert sum(backbone_spy) == off["feature_passes"]["tile"]["backbone_images"] > 3 * distinct


def test_model_reference_state_untouched(model, root, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("library code must pass references, not set them on the model")

    for name in ("set_references", "set_reference_bank", "clear_references"):
        monkeypatch.setattr(model, name, refuse)
    _run(model, root, reference_strategy="aligned", reference_seeds=1)
    _run(model, root, feature_cache=False, reference_seeds=1)
    assert model.reference_bank is None


def _nearest_residual(tokens: torch.Tensor, bank: torch.Tensor, metric: str) -> torch.Tensor:
    """``tokens [N, C]`` minus each one's nearest ``bank [M, C]`` row, by explicit search."""
    if metric == "cosine":
        index = (F.normalize(tokens, dim=1) @ F.normalize(bank, dim=1).T).argmax(dim=1)
    else:
        index = torch.cdist(tokens, bank).argmin(dim=1)
    return tokens - bank[index]


def test_residual_kind_equals_explicit_nearest_neighbour_residuals(model):
    g = torch.Generator().manual_seed(3)
    size = model.config.image_size
    refs, queries = torch.randn(3, 3, size, size, generator=g), torch.randn(2, 3, size, size, generator=g)
    extractor = ModelFeatureExtractor(model, "residual")
    extractor.set_references(refs)
    got = extractor(queries)
    with torch.no_grad():
        ref_tokens, query_tokens = model.backbone(refs), model.backbone(queries)
    for layer, grid in enumerate(got):
        bank = ref_tokens[layer].flatten(0, 1)
        for i in range(2):
            expected = _nearest_residual(query_tokens[layer][i], bank, model.config.matching_metric)
            torch.testing.assert_close(grid[i].flatten(1).T, expected, atol=1e-5, rtol=1e-5)
    # a reference matched against its own set has zero residual
    assert all(float(g_.abs().max()) < 1e-5 for g_ in extractor(refs[:1]))


def test_cache_serves_every_kind_from_one_pass(model, backbone_spy):
    g = torch.Generator().manual_seed(4)
    size = model.config.image_size
    refs, images = torch.randn(2, 3, size, size, generator=g), torch.randn(4, 3, size, size, generator=g)
    cache = FeatureCache(budget_mb=1.0)
    bank = shared_bank(cache, model, refs, batch_size=8)
    expected_bank = ReferenceBank.from_pixels(model, refs)
    assert all(torch.equal(a, b) for a, b in zip(bank.layers, expected_bank.layers)) and bank.keys == expected_bank.keys
    backbone_spy.clear()
    direct = {kind: ModelFeatureExtractor(model, kind, references=bank, source=DirectSource())(images) for kind in ("backbone", "residual", "pretrained")}
    assert sum(backbone_spy) == 3 * len(images)
    backbone_spy.clear()
    for kind in ("pretrained", "backbone", "residual", "pretrained"):
        cached = ModelFeatureExtractor(model, kind, references=bank, source=cache)(images)
        assert all(torch.equal(a, b) for a, b in zip(cached, direct[kind]))
    assert sum(backbone_spy) == len(images) and cache.stats.projector_images == len(images)
    cache.close()


def test_bad_cache_and_kind_settings(root):
    with pytest.raises(ValueError, match="unknown feature kind"):
        EvaluationConfig(root, kinds="backbone,projected").validate()
    with pytest.raises(ValueError, match="feature_cache_mb"):
        EvaluationConfig(root, feature_cache_mb=-1).validate()
    with pytest.raises(ValueError, match="GLASS"):
        EvaluationConfig(root, methods="glass", kinds="residual").validate()
    assert EvaluationConfig(root, kinds="pretrained,backbone").feature_kinds == ("backbone", "pretrained")
    with pytest.raises(ValueError, match="negative"):
        FeatureCache(budget_mb=-1)


def test_cli_feature_kinds_and_cache_flags(root, tmp_path, capsys):
    outputs = {}
    for name, flags in (("cached", ["--feature-cache-mb", "0"]), ("plain", ["--no-feature-cache"])):
        out = tmp_path / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = cli_main(["evaluate", "--preset", "tiny-clip", "--data", str(root), "--methods", "padim", "--shots", "2",
                             "--kinds", "residual,backbone", "--output", str(out), "--num-overlays", "0", "--no-progress", *flags])
        assert code == 0
        outputs[name] = json.loads((out / "results.json").read_text())
    assert "| category | PaDiM w/o | PaDiM res. |" in capsys.readouterr().out
    assert outputs["cached"]["results"] == outputs["plain"]["results"]
    assert set(outputs["cached"]["results"]["tile"]["padim"]) == {"backbone", "residual"}
    assert outputs["cached"]["feature_passes"]["tile"]["backbone_images"] == _distinct_files(root)
    assert cli_main(["evaluate", "--preset", "tiny-clip", "--data", str(root), "--kinds", "projected"]) == 1
    assert "unknown feature kind" in capsys.readouterr().err


def test_only_admitted_images_are_stored(model, backbone_spy):
    """A detector's own augmentations (GLASS) are computed, never stored: memory stays bounded."""
    g = torch.Generator().manual_seed(5)
    size = model.config.image_size
    images = torch.randn(4, 3, size, size, generator=g)
    cache = FeatureCache(budget_mb=1.0)
    cache.admit(images[:2])
    extractor = ModelFeatureExtractor(model, "backbone", source=cache)
    first = extractor(images)
    per_image = sum(t[0].numel() * t.element_size() for t in model.backbone(images[:1]))
    backbone_spy.clear()
    second = extractor(images)
    assert sum(backbone_spy) == 2  # the two not admitted run again
    assert cache.stats.memory_bytes == 2 * per_image
    assert all(torch.equal(a, b) for a, b in zip(first, second))
