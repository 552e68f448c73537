"""The folder layouts (MVTec AD, MPDD, MVTec 3D-AD, BTAD) and VisA's split file, read on tiny trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from adpretrain_hf.data import AD_FEATURES, load_mvtec_style

from .helpers import check_masks, make_btad, make_mvtec, make_mvtec3d, make_visa


def test_mvtec_rows_labels_and_masks(tmp_path):
    truths = make_mvtec(tmp_path)
    dd = load_mvtec_style(tmp_path)
    assert set(dd) == {"train", "test"}
    assert dd["train"].features == AD_FEATURES and dd["test"].features == AD_FEATURES
    train, test = dd["train"], dd["test"]
    assert len(train) == 5 and len(test) == 5
    assert set(train["label"]) == {0} and set(train["split"]) == {"train"} and set(train["view"]) == {""}
    assert sorted(zip(test["category"], test["defect"], test["label"])) == sorted(
        [("bottle", "good", 0)] * 2 + [("bottle", "broken_large", 1)] * 2 + [("carpet", "cut", 1)]
    )
    assert set(test["split"]) == {"test"}
    check_masks(test, truths)
    assert Path(train[0]["image"].filename).is_absolute()


def test_mvtec_categories_filter_and_unknown(tmp_path):
    make_mvtec(tmp_path)
    dd = load_mvtec_style(tmp_path, categories="carpet")
    assert set(dd["train"]["category"]) == {"carpet"} and len(dd["test"]) == 1
    with pytest.raises(ValueError, match=r"\['cable'\] not found.*available: \['bottle', 'carpet'\]"):
        load_mvtec_style(tmp_path, categories=["cable"])


def test_empty_category_is_an_error(tmp_path):
    make_mvtec(tmp_path)
    (tmp_path / "empty/train/good").mkdir(parents=True)
    with pytest.raises(ValueError, match="'empty'.*no images"):
        load_mvtec_style(tmp_path)
    assert len(load_mvtec_style(tmp_path, categories=["bottle"])["train"]) == 3


@pytest.mark.parametrize(
    "make, dataset, mask, message",
    [
        (make_mvtec, "mvtec", "bottle/ground_truth/broken_large/001_mask.png",
         r"broken_large/001\.png.*expected .*ground_truth/broken_large/001_mask\.png"),
        (make_mvtec3d, "mvtec3d", "bagel/test/crack/gt/001.png", r"crack/rgb/001\.png.*expected .*crack/gt/001\.png"),
        (make_btad, "btad", "01/ground_truth/ko/0000.png", r"01/test/ko/0000\.bmp.*expected .*01/ground_truth/ko/0000\.png"),
    ],
)
def test_missing_mask_names_image_and_expected_path(tmp_path, make, dataset, mask, message):
    make(tmp_path)
    (tmp_path / mask).unlink()
    with pytest.raises(ValueError, match=message):
        load_mvtec_style(tmp_path, dataset=dataset)


@pytest.mark.parametrize(
    "row, message",
    [
        (["candle", "test", "anomaly", "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/nope.png"],
         r"Anomaly/000\.JPG.*nope\.png"),
        (["candle", "test", "anomaly", "candle/Data/Images/Anomaly/000.JPG", ""], "mask column is empty"),
        (["candle", "val", "normal", "candle/Data/Images/Normal/0000.JPG", ""], "line 2.*split must be train/test"),
        (["candle", "train", "normal", "candle/Data/Images/Normal/9999.JPG", ""], "9999.JPG.*does not exist"),
    ],
)
def test_visa_errors(tmp_path, row, message):
    make_visa(tmp_path, rows_override=[row])
    with pytest.raises(ValueError, match=message):
        load_mvtec_style(tmp_path, dataset="visa")


def test_visa_missing_column_and_file(tmp_path):
    make_visa(tmp_path)
    (tmp_path / "split_csv/1cls.csv").write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(ValueError, match=r"lacks columns \['label', 'mask'\]"):
        load_mvtec_style(tmp_path, dataset="visa")
    (tmp_path / "split_csv/1cls.csv").unlink()
    with pytest.raises(ValueError, match="split_csv/1cls.csv"):
        load_mvtec_style(tmp_path, dataset="visa")
