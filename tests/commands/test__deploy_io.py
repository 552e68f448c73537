"""adpretrain_hf.commands._deploy_io: the MVTec-style val folder, collision-free output names, --device."""

import argparse
from pathlib import Path

import pytest
import torch

from adpretrain_hf.commands._deploy_io import find_images, load_validation_set, output_path, output_stem, resolve_device


def test_the_val_folder_is_read_the_mvtec_way(workspace):
    labelled = load_validation_set(str(workspace / "val"))
    assert labelled.labels == [0] * 4 + [1] * 3 and labelled.defects == ["scratch"]
    assert [m.name if m else None for m in labelled.masks] == [None] * 4 + [f"{i}_mask.png" for i in range(3)]
    normal = load_validation_set(str(workspace / "val_normal"))
    assert normal.labels is None and len(normal.images) == 4


def test_output_names_never_clash(workspace):
    root, images = find_images(str(workspace / "test"), "images")
    stems = [output_stem(p, root).as_posix() for p in images]
    assert stems == ["a_jpg", "a_png", "sub/a_png"]
    _, globbed = find_images(str(workspace / "test" / "**" / "*.png"), "images")
    assert [p.relative_to(workspace / "test").as_posix() for p in globbed] == ["a.png", "sub/a.png"]


def test_output_files_keep_every_dot_of_the_name(tmp_path):
    root = Path("/data")
    names = [output_path(tmp_path, output_stem(root / name, root), ".npy").relative_to(tmp_path).as_posix()
             for name in ("x.v1.png", "x.v2.png", "sub/a.png")]
    assert names == ["x.v1_png.npy", "x.v2_png.npy", "sub/a_png.npy"]  # with_suffix would give x.npy twice


def test_device_auto_follows_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda"
    with pytest.raises(Exception, match="1 visible CUDA device"):
        resolve_device("cuda:3")


def test_every_input_form_names_the_same_images(workspace):
    """A file, several files, a glob and a folder tree: one rule (folders are searched recursively)."""
    from adpretrain_hf.commands._deploy_io import gather_images, image_input

    test = workspace / "test"
    tree = sorted(p.absolute() for p in test.rglob("*") if p.is_file())
    assert gather_images([image_input(str(test))])[1] == tree
    assert gather_images([image_input(str(test / "**" / "*"))])[1] == tree
    files = [image_input(str(p)) for p in tree]
    root, images = gather_images(files)
    assert images == tree and root == test.absolute()
    root, (one,) = gather_images([image_input(str(test / "a.png"))])
    assert one == (test / "a.png").absolute() and root == test.absolute()
    assert gather_images([image_input(str(test)), image_input(str(test / "a.png"))])[1] == tree  # each image once


@pytest.mark.parametrize(("value", "message"), [
    ("{tmp}/missing.png", "missing.png does not exist"),
    ("{tmp}/no/*.png", "no images match"),
    ("https://example.com/a.png", "is a URL: download the images"),
    ("{tmp}/notes.txt", "is not an image file"),
    ("{tmp}/empty", "no images under"),
])
def test_bad_image_inputs_are_argument_errors_naming_the_value(tmp_path, value, message):
    from adpretrain_hf.commands._deploy_io import image_input

    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        image_input(value.format(tmp=tmp_path))


def test_local_looking_model_paths_are_never_hub_ids(workspace, tmp_path):
    from adpretrain_hf.commands._deploy_io import model_source

    assert model_source(str(workspace / "ckpt")) == str(workspace / "ckpt")
    assert model_source("org/name") == "org/name"  # no folder of that name here: a Hub id
    for local in ("runs/det", "./det", "det", "../x/det", str(tmp_path / "det"), "runs/a/b", "~/det", "C:\\\\det"):
        with pytest.raises(argparse.ArgumentTypeError, match="does not exist"):
            model_source(local if local != "runs/det" else str(tmp_path / local))
    with pytest.raises(argparse.ArgumentTypeError, match="holds no config.json"):
        model_source(str(workspace / "train"))


def test_names_that_differ_only_in_case_get_distinct_outputs(tmp_path):
    from adpretrain_hf.commands._deploy_io import output_names

    paths = [tmp_path / "a.png", tmp_path / "a.PNG", tmp_path / "A.png", tmp_path / "b.png", tmp_path / "s" / "a.png"]
    names = output_names(paths, tmp_path)
    folded = [n.as_posix().casefold() for n in names.values()]
    assert len(set(folded)) == len(paths)  # distinct on a case-insensitive file system too
    assert names[tmp_path / "b.png"].as_posix() == "b_png" and names[tmp_path / "s" / "a.png"].as_posix() == "s/a_png"
    assert output_names(paths, tmp_path) == names  # the same run twice, the same names


def test_atomic_files_are_whole_or_absent(tmp_path):
    from adpretrain_hf.commands._deploy_io import atomic_file

    target = tmp_path / "out.csv"
    with atomic_file(target) as handle:
        handle.write("old\n")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as handle:
            handle.write("half of the new rows\n")
            raise RuntimeError("crash")
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN", "x"])
def test_non_finite_numbers_are_argument_errors(text):
    from adpretrain_hf.commands._deploy_io import finite_float

    with pytest.raises(argparse.ArgumentTypeError):
        finite_float(text)
