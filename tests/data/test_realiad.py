"""Real-IAD loader and its evaluation split, on a hand-built tree named like the real dataset."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, Image as ImageFeature
from PIL import Image

from adpretrain_hf.data import AD_FEATURES, load_ad_dataset, load_realiad, parse_view, realiad_eval_split
from adpretrain_hf.data.realiad import _fit_count

SIZE = (20, 14)


def jpg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=95)


def png_mask(path: Path, box: tuple[int, int, int, int]) -> np.ndarray:
    truth = np.zeros((SIZE[1], SIZE[0]), bool)
    truth[box[1]:box[3], box[0]:box[2]] = True
    Image.fromarray(truth.astype(np.uint8) * 255, "L").save(path)
    return truth


def paths(ds: Dataset) -> list[str]:
    return [image["path"] for image in ds.cast_column("image", ImageFeature(decode=False))["image"]]


def make_realiad(root: Path) -> dict[str, tuple[int, str, str, str, np.ndarray | None]]:
    """Two classes; returns file stem -> (label, defect, view, sample_id, mask truth)."""
    expected = {}

    def add(cls: str, rel: str, label: int, defect: str, view: str, sample: str, box=None, seed=0) -> None:
        path = root / cls / rel
        jpg(path, seed)
        truth = png_mask(path.with_suffix(".png"), box) if box else None
        expected[path.stem] = (label, defect, view, f"{cls}/{sample}", truth)

    # the full dataset's names carry a time stamp after the view
    for sample, views in (("S0001", "C1 C2"), ("S0002", "C1 C2 C3"), ("S0003", "C5")):
        n = sample[1:]
        for view in views.split():
            add("audiojack", f"OK/{sample}/audiojack_{n}_OK_{view}_20230922093438.jpg", 0, "good", view, f"OK/{sample}")
    add("audiojack", "NG/AK/S0004/audiojack_0004_NG_AK_C1_20230922093500.jpg", 1, "AK", "C1", "NG/AK/S0004", (2, 2, 8, 6))
    # an NG view where the defect is not visible: no mask, so normal, but it keeps its defect name
    add("audiojack", "NG/AK/S0004/audiojack_0004_NG_AK_C2_20230922093501.jpg", 0, "AK", "C2", "NG/AK/S0004")
    add("audiojack", "NG/BX/S0005/audiojack_0005_NG_BX_C3_20230922093502.jpg", 1, "BX", "C3", "NG/BX/S0005", (0, 5, 20, 9))
    # the names of ../shared/data/realiad-mini
    for i in range(1, 5):
        add("pcb", f"OK/S{i:04d}/pcb_{i:04d}_OK_C1.jpg", 0, "good", "C1", f"OK/S{i:04d}", seed=i)
    add("pcb", "NG/HS/S0005/pcb_0005_NG_C1.jpg", 1, "HS", "C1", "NG/HS/S0005", (10, 0, 14, 14))
    return expected


def test_rows_match_the_tree(tmp_path):
    expected = make_realiad(tmp_path)
    # a mask beside an OK image is ignored: OK images are normal
    png_mask(tmp_path / "pcb/OK/S0001/pcb_0001_OK_C1.png", (0, 0, 3, 3))
    ds = load_realiad(tmp_path)
    assert ds.features == AD_FEATURES
    assert len(ds) == len(expected)
    assert set(ds["split"]) == {"train"}
    for row in ds:
        stem = Path(row["image"].filename).stem
        label, defect, view, sample_id, truth = expected[stem]
        assert (row["label"], row["defect"], row["view"], row["sample_id"]) == (label, defect, view, sample_id)
        assert row["category"] == stem.split("_")[0]
        if truth is None:
            assert row["mask"] is None
        else:
            assert row["mask"].size == row["image"].size
            np.testing.assert_array_equal(np.asarray(row["mask"]) > 0, truth)


def test_categories_and_errors(tmp_path):
    make_realiad(tmp_path)
    assert set(load_realiad(tmp_path, categories="pcb")["category"]) == {"pcb"}
    with pytest.raises(ValueError, match=r"\['tire'\] not found.*\['audiojack', 'pcb'\]"):
        load_realiad(tmp_path, categories=["tire"])
    (tmp_path / "woodstick/OK/S0001").mkdir(parents=True)
    with pytest.raises(ValueError, match="'woodstick' has no images.*OK/<sample>/\\*.jpg"):
        load_realiad(tmp_path)
    with pytest.raises(TypeError, match="categories must be names"):
        load_realiad(tmp_path, categories=[1])


def test_detected_and_loaded_as_train_only(tmp_path):
    expected = make_realiad(tmp_path)
    dd = load_ad_dataset(tmp_path)
    assert list(dd) == ["train"] and len(dd["train"]) == len(expected) == 14


@pytest.mark.parametrize(
    "stem, view",
    [("pcb_0001_OK_C1", "C1"), ("a_0004_NG_AK_C5_20230922093500", "C5"), ("C3_x", "C3"), ("x_C10", ""), ("x_0001", "")],
)
def test_parse_view(stem, view):
    assert parse_view(stem) == view


def test_eval_split_groups_samples_and_keeps_ng_for_testing(tmp_path):
    make_realiad(tmp_path)
    ds = load_realiad(tmp_path)
    dd = realiad_eval_split(ds, fit_fraction=0.5, seed=0)
    train, test = dd["train"], dd["test"]
    assert train.features == AD_FEATURES and test.features == AD_FEATURES
    assert set(train["split"]) == {"train"} and set(test["split"]) == {"test"}
    # a partition of the rows
    assert sorted(paths(train) + paths(test)) == sorted(paths(ds))
    # fitting data is OK images only; every NG image (masked or not) is tested
    assert set(train["defect"]) == {"good"} and set(train["label"]) == {0}
    assert {d for d in ds["defect"] if d != "good"} <= set(test["defect"])
    assert sum(1 for d in test["defect"] if d != "good") == sum(1 for d in ds["defect"] if d != "good")
    # the views of one sample never straddle
    assert not set(train["sample_id"]) & set(test["sample_id"])
    # the share of OK samples, counted independently: audiojack has 3, pcb 4 -> 2 and 2 fit samples
    fit = defaultdict(set)
    for category, sample in zip(train["category"], train["sample_id"]):
        fit[category].add(sample)
    assert {c: len(s) for c, s in fit.items()} == {"audiojack": 2, "pcb": 2}
    # test keeps normal images in every category
    assert {c for c, d in zip(test["category"], test["defect"]) if d == "good"} == {"audiojack", "pcb"}


def test_eval_split_is_deterministic_and_per_category(tmp_path):
    make_realiad(tmp_path)
    ds = load_realiad(tmp_path)
    first = realiad_eval_split(ds, seed=3)
    assert paths(realiad_eval_split(ds, seed=3)["train"]) == paths(first["train"])
    choices = {tuple(sorted(set(realiad_eval_split(ds, seed=s)["train"]["sample_id"]))) for s in range(8)}
    assert len(choices) > 1  # the seed matters
    only_pcb = realiad_eval_split(load_realiad(tmp_path, categories="pcb"), seed=3)
    pcb_in_both = [s for s, c in zip(first["train"]["sample_id"], first["train"]["category"]) if c == "pcb"]
    assert list(only_pcb["train"]["sample_id"]) == pcb_in_both


@pytest.mark.parametrize("n, fraction, fit", [(1, 0.5, 1), (2, 0.5, 1), (3, 0.5, 2), (4, 0.5, 2), (10, 0.9, 9),
                                              (10, 0.99, 9), (10, 0.01, 1), (7, 0.3, 2)])
def test_fit_count(n, fraction, fit):
    assert _fit_count(n, fraction) == fit


def test_eval_split_errors(tmp_path):
    make_realiad(tmp_path)
    ds = load_realiad(tmp_path)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        realiad_eval_split(ds, fit_fraction=1.0)
    with pytest.raises(TypeError, match="datasets.Dataset"):
        realiad_eval_split({"train": ds})
    with pytest.raises(ValueError, match=r"lacks columns \['sample_id'\]"):
        realiad_eval_split(ds.remove_columns("sample_id"))
    only_ng = ds.filter(lambda defect: defect != "good", input_columns="defect")
    with pytest.raises(ValueError, match="'audiojack' has no OK"):
        realiad_eval_split(only_ng)
    assert isinstance(only_ng, Dataset)
