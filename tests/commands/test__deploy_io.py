"""adpretrain_hf.commands._deploy_io: the MVTec-style val folder, collision-free output names, --device."""

from pathlib import Path

import pytest
import torch

from adpretrain_hf.commands._deploy_io import find_images, load_validation_set, output_file, output_stem, resolve_device


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


def test_output_files_keep_every_dot_of_the_name():
    root = Path("/data")
    names = [output_file(root / name, root, ".npy").as_posix() for name in ("x.v1.png", "x.v2.png", "sub/a.png")]
    assert names == ["x.v1_png.npy", "x.v2_png.npy", "sub/a_png.npy"]  # with_suffix would give x.npy twice


def test_device_auto_follows_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda"
    with pytest.raises(Exception, match="1 visible CUDA device"):
        resolve_device("cuda:3")
