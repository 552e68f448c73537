"""`adpretrain synth`: writes what generate_dataset writes for the same options, and names bad categories.

The reference is ``adpretrain_hf.data.generate_dataset`` called directly: same seed, byte-identical files.
"""

import pytest

from adpretrain_hf.cli import main
from adpretrain_hf.data import generate_dataset

TINY = ["--num-normal", "2", "--num-anomalous", "1", "--image-size", "32", "--quiet"]


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout, extra", [("mvtec", {"num_test_normal": 1}), ("realiad", {"num_views": 1})])
def test_synth_writes_what_generate_dataset_writes(tmp_path, capsys, layout, extra):
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in extra.items()]
    argv = ["synth", "--layout", layout, "--out", str(tmp_path / "cli"), "--categories", "tile, washer", "--seed", "3"]
    assert main([*argv, *TINY, *flags]) == 0
    result = generate_dataset(tmp_path / "api", layout=layout, categories=["tile", "washer"], num_normal=2,
                              num_anomalous=1, image_size=32, seed=3, progress=False, **extra)
    got, expected = _files(tmp_path / "cli"), _files(tmp_path / "api")
    assert got == expected and len(got) >= result.num_images + result.num_masks
    out = capsys.readouterr().out
    assert f"wrote {result.num_images} images and {result.num_masks} masks ({layout} layout" in out
    assert "categories tile, washer" in out


@pytest.mark.parametrize("categories, named", [("tile,carpet", "['carpet']"), (" , ", "[' , ']")])
def test_unknown_categories_are_one_line_with_the_choices(tmp_path, capsys, categories, named):
    assert main(["synth", "--out", str(tmp_path / "x"), "--categories", categories, *TINY]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and f"unknown synthetic categories {named}" in err[0]
    assert err[1].strip().startswith("hint: choose from") and "washer" in err[1]
    assert not (tmp_path / "x").exists()


def test_a_bad_option_value_is_one_line_with_a_hint(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "x"), "--categories", "tile", "--num-views", "9", *TINY]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "num_views" in err[0] and "see adpretrain synth --help" in err[1]
