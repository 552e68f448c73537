"""Reference sampling: same class, same view, true normal images only."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from datasets import Dataset

from adpretrain_hf.data import AD_FEATURES, ReferenceSampler
from adpretrain_hf.modeling.configuration_adpretrain import TRAINING_REFERENCE_SHOTS


def table(rows: list[tuple[str, str, int, str]]) -> Dataset:
    """Rows of (category, view, label, defect); paths are never opened by the sampler."""
    columns = {name: [] for name in AD_FEATURES}
    for i, (category, view, label, defect) in enumerate(rows):
        columns["image"].append(f"/nowhere/{i}.jpg")
        columns["mask"].append(f"/nowhere/{i}.png" if label else None)
        for name, value in zip(("category", "view", "label", "defect"), (category, view, label, defect)):
            columns[name].append(value)
        columns["split"].append("train")
        columns["sample_id"].append(f"{category}/{i}")
    return Dataset.from_dict(columns, features=AD_FEATURES)


ROWS = (
    [("pcb", "C1", 0, "good")] * 3
    + [("pcb", "C2", 0, "good")] * 2
    + [("pcb", "C1", 1, "HS"), ("pcb", "C2", 0, "HS")]  # an NG view without mask: not a reference
    + [("tire", "C1", 0, "good")]
    + [("bottle", "", 0, "good")] * 2
    + [("bottle", "", 1, "broken")]
)


def test_sample_same_category_same_view_normal_only():
    ds = table(ROWS)
    sampler = ReferenceSampler(ds, seed=0)
    rng = np.random.default_rng(1)
    for category, view in [("pcb", "C1"), ("pcb", "C2"), ("tire", "C1"), ("bottle", "")]:
        picked = sampler.sample(category, view, 8, rng)
        assert len(picked) == 8  # with replacement, even from a pool of 1 or 2
        expected = {i for i, (c, v, label, d) in enumerate(ROWS) if (c, v, label, d) == (category, view, 0, "good")}
        assert set(picked) <= expected
    assert set(sampler.sample("pcb", "C2", 50, rng)) == {3, 4}  # every normal C2 image is reachable; never row 6
    assert sampler.keys == [("bottle", ""), ("pcb", "C1"), ("pcb", "C2"), ("tire", "C1")]


def test_sampling_is_roughly_uniform_and_reproducible():
    sampler = ReferenceSampler(table(ROWS), seed=4)
    counts = Counter(sampler.sample("pcb", "C1", 3000))
    assert set(counts) == {0, 1, 2} and all(abs(n / 3000 - 1 / 3) < 0.04 for n in counts.values())
    a = ReferenceSampler(table(ROWS), seed=7).sample_batch(["pcb", "bottle"], ["C1", ""])
    b = ReferenceSampler(table(ROWS), seed=7).sample_batch(["pcb", "bottle"], ["C1", ""])
    assert a == b


def test_draw_k_covers_the_choices():
    sampler = ReferenceSampler(table(ROWS), seed=0)
    draws = Counter(sampler.draw_k() for _ in range(600))
    assert set(draws) == set(TRAINING_REFERENCE_SHOTS) == {1, 4, 8}
    assert all(abs(n / 600 - 1 / 3) < 0.08 for n in draws.values())


def test_sample_batch_shares_k():
    sampler = ReferenceSampler(table(ROWS), seed=0)
    for _ in range(10):
        k, picks = sampler.sample_batch(["pcb", "pcb", "bottle"], ["C1", "C2", ""], np.random.default_rng())
        assert k in TRAINING_REFERENCE_SHOTS and [len(p) for p in picks] == [k, k, k]
        assert set(picks[2]) <= {8, 9}


def test_exclude_the_query():
    sampler = ReferenceSampler(table(ROWS), seed=0)
    assert 0 not in sampler.sample("pcb", "C1", 200, exclude=0)
    with pytest.raises(ValueError, match="no normal image other than row 7"):
        sampler.sample("tire", "C1", 1, exclude=7)


def test_errors():
    sampler = ReferenceSampler(table(ROWS), seed=0)
    with pytest.raises(ValueError, match=r"no normal image for category 'pcb', view 'C3'.*\('pcb', 'C1'\)"):
        sampler.sample("pcb", "C3", 1)
    with pytest.raises(ValueError, match="'bottle', view 'C1'"):
        sampler.sample("bottle", "C1", 1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        sampler.sample("pcb", "C1", 0)
    with pytest.raises(ValueError, match="one entry per image"):
        sampler.sample_batch(["pcb"], ["C1", "C2"])
    with pytest.raises(TypeError, match="datasets.Dataset"):
        ReferenceSampler([1, 2])
    with pytest.raises(ValueError, match=r"lacks columns \['view'\]"):
        ReferenceSampler(table(ROWS).remove_columns("view"))
