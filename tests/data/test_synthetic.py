"""Synthetic generator: determinism, file names, loader round trips, views, CLI."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adpretrain_hf.cli import main
from adpretrain_hf.data import (
    DEFECT_KINDS,
    SYNTHETIC_CATEGORIES,
    generate_dataset,
    load_mvtec_style,
    load_realiad,
    render_views,
)
from adpretrain_hf.data.synthetic_scenes import OBJECT_CATEGORIES, TEXTURE_CATEGORIES

SMALL = 48  # image side for tests: fast, still large enough for every defect


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_catalogue():
    assert set(SYNTHETIC_CATEGORIES) == set(TEXTURE_CATEGORIES) | set(OBJECT_CATEGORIES)
    assert {"fabric", "wood", "tile", "bottle", "screw", "washer"} <= set(SYNTHETIC_CATEGORIES)
    assert set(DEFECT_KINDS) == {"scratch", "crack", "hole", "stain", "missing_part"}


@pytest.mark.parametrize("layout", ["realiad", "mvtec"])
def test_same_seed_same_bytes(tmp_path, layout):
    kwargs = dict(layout=layout, categories=["wood", "washer"], num_normal=2, num_anomalous=3, image_size=SMALL,
                  progress=False)
    generate_dataset(tmp_path / "a", seed=7, **kwargs)
    generate_dataset(tmp_path / "b", seed=7, **kwargs)
    generate_dataset(tmp_path / "c", seed=8, **kwargs)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b and len(a) > 10
    images = [k for k in a if k.endswith(".jpg")] if layout == "realiad" else [k for k in a if "ground_truth" not in k]
    assert len(images) >= 10 and all(a[k] != c[k] for k in images)  # another seed changes every image


def test_category_files_do_not_depend_on_other_categories(tmp_path):
    generate_dataset(tmp_path / "one", categories=["tile"], num_normal=2, num_anomalous=2, image_size=SMALL,
                     progress=False)
    generate_dataset(tmp_path / "two", categories=["fabric", "tile"], num_normal=2, num_anomalous=2,
                     image_size=SMALL, progress=False)
    assert files(tmp_path / "one" / "tile") == files(tmp_path / "two" / "tile")


REALIAD_OK = re.compile(r"^(?P<c>[a-z]+)/OK/S(?P<n>\d{4})/(?P=c)_(?P=n)_OK_C[1-5]\.jpg$")
REALIAD_NG = re.compile(r"^(?P<c>[a-z]+)/NG/(?P<d>[a-z_]+)/S(?P<n>\d{4})/(?P=c)_(?P=n)_NG_C[1-5]\.(jpg|png)$")


def test_realiad_names_and_loader_roundtrip(tmp_path):
    result = generate_dataset(tmp_path, categories=["fabric", "screw"], num_normal=3, num_anomalous=5,
                              image_size=SMALL, num_views=2, seed=1, progress=False)
    names = list(files(tmp_path))
    assert all(REALIAD_OK.match(n) or REALIAD_NG.match(n) for n in names), names
    images = [n for n in names if n.endswith(".jpg")]
    masks = [n for n in names if n.endswith(".png")]
    assert (len(images), len(masks)) == (result.num_images, result.num_masks) == (2 * 8 * 2, result.num_masks)
    assert all(n[:-4] + ".jpg" in images for n in masks)  # every mask sits beside its image
    ok_numbers = {REALIAD_OK.match(n)["n"] for n in images if "/OK/" in n and n.startswith("fabric")}
    ng_numbers = {REALIAD_NG.match(n)["n"] for n in images if "/NG/" in n and n.startswith("fabric")}
    assert not ok_numbers & ng_numbers and len(ok_numbers | ng_numbers) == 8  # unique per class
    assert {REALIAD_NG.match(n)["d"] for n in images if "/NG/" in n and n.startswith("fabric")} == set(DEFECT_KINDS)
    # every NG sample has a mask in C1; some other views do not show the defect
    assert all(f"{Path(n).parent.as_posix()}/{Path(n).name.replace('_C2', '_C1')[:-4]}.png" in masks
               for n in images if "/NG/" in n)
    assert any(n.endswith("_C2.jpg") and n[:-4] + ".png" not in masks for n in images if "/NG/" in n)

    ds = load_realiad(tmp_path)
    assert len(ds) == result.num_images and sum(ds["label"]) == result.num_masks
    assert set(ds["view"]) == {"C1", "C2"}
    for row in ds:
        if row["mask"] is not None:
            mask = np.asarray(row["mask"])
            assert row["mask"].size == row["image"].size == (SMALL, SMALL)
            assert set(np.unique(mask)) == {0, 255}


def test_mvtec_layout_loader_roundtrip(tmp_path):
    generate_dataset(tmp_path, layout="mvtec", categories=["bottle"], num_normal=4, num_anomalous=6,
                     num_test_normal=3, image_size=SMALL, progress=False)
    dd = load_mvtec_style(tmp_path)
    assert len(dd["train"]) == 4 and set(dd["train"]["label"]) == {0}
    test = dd["test"]
    assert sorted(test["label"]) == [0] * 3 + [1] * 6
    # kinds are cycled: 6 anomalies over 5 kinds -> scratch twice, numbered 000 and 001
    assert sorted(d for d in test["defect"] if d != "good") == sorted(list(DEFECT_KINDS) + ["scratch"])
    assert (tmp_path / "bottle/test/scratch/001.png").is_file()
    assert (tmp_path / "bottle/ground_truth/scratch/001_mask.png").is_file()
    for row in test:
        if row["label"] == 1:
            assert row["mask"].size == row["image"].size and np.asarray(row["mask"]).any()


def test_views_differ_and_masks_follow_the_view():
    views = render_views("tile", "hole", seed=[3], image_size=SMALL, num_views=5)
    assert views[0].mask is not None
    for a, b in zip(views, views[1:]):
        assert not np.array_equal(a.clean, b.clean)
    for view in views:
        if view.mask is not None:  # the mask marks where that view's image differs from its clean twin
            changed = np.any(view.image != view.clean, axis=-1)
            assert not np.any(changed & ~view.mask)
        else:
            assert np.array_equal(view.image, view.clean) and view.defect == "hole"


def test_generator_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown synthetic category 'cable'.*'fabric'"):
        generate_dataset(tmp_path, categories=["cable"], progress=False)
    with pytest.raises(ValueError, match="unknown synthetic layout"):
        generate_dataset(tmp_path, layout="visa", progress=False)
    with pytest.raises(ValueError, match="num_normal must be >= 1"):
        generate_dataset(tmp_path, num_normal=0, progress=False)
    with pytest.raises(TypeError, match="num_anomalous must be an integer"):
        generate_dataset(tmp_path, num_anomalous="3", progress=False)
    with pytest.raises(ValueError, match="image_size must be >= 32"):
        generate_dataset(tmp_path, image_size=8, progress=False)
    with pytest.raises(ValueError, match=r"defects must be a non-empty list.*'scratch'"):
        generate_dataset(tmp_path, defects=["dent"], progress=False)
    with pytest.raises(ValueError, match=r"num_views must be in \[1, 5\]"):
        generate_dataset(tmp_path, num_views=6, progress=False)
    with pytest.raises(ValueError, match="unknown defect kind"):
        render_views("wood", "dent")
    generate_dataset(tmp_path, categories=["wood"], num_normal=1, num_anomalous=0, image_size=32, progress=False)
    with pytest.raises(ValueError, match="already holds files.*overwrite"):
        generate_dataset(tmp_path, categories=["wood"], num_normal=1, image_size=32, progress=False)
    generate_dataset(tmp_path, categories=["wood"], num_normal=2, num_anomalous=0, image_size=32, overwrite=True,
                     progress=False)
    assert len(list((tmp_path / "wood/OK").iterdir())) == 2


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "synth"
    code = main(["synth", "--layout", "mvtec", "--out", str(out), "--categories", "tile,bottle", "--num-normal", "2",
                 "--num-anomalous", "1", "--image-size", "32", "--unaligned", "--quiet"])
    assert code == 0
    assert "wrote 8 images and 2 masks" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["bottle", "tile"]
    assert Image.open(out / "tile/train/good/000.png").size == (32, 32)
    assert main(["synth", "--out", str(out), "--categories", "tile,cable"]) == 1
    err = capsys.readouterr().err
    assert "unknown synthetic categories ['cable']" in err and "hint: choose from fabric" in err
    assert main(["synth", "--out", str(out), "--num-views", "9", "--quiet"]) == 1
    assert "num_views must be in [1, 5]" in capsys.readouterr().err


def test_cli_defaults_mirror_the_library():
    """The subcommand repeats defaults to keep --help import-free; they must not drift."""
    import argparse

    from adpretrain_hf.commands import synth
    from adpretrain_hf.data import synthetic

    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["--out", "x"])
    assert (args.num_normal, args.num_anomalous, args.image_size, args.num_views) == (
        synthetic.DEFAULT_NUM_NORMAL, synthetic.DEFAULT_NUM_ANOMALOUS, synthetic.DEFAULT_IMAGE_SIZE,
        synthetic.DEFAULT_NUM_VIEWS)
    assert synth._LAYOUTS == synthetic.SYNTHETIC_LAYOUTS
    categories_help = next(a.help for a in parser._actions if a.dest == "categories")
    assert ", ".join(SYNTHETIC_CATEGORIES) in categories_help
