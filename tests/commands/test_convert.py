"""`adpretrain convert`: its help, a conversion through the command, and its one-line errors."""

import pytest
import torch

from adpretrain_hf import ADPretrainModel
from adpretrain_hf.cli import main

from ..release_files import _release_state, _save, _tiny_backbone_dir


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["convert", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--release-checkpoint" in out and "--bundle-backbone" in out and "out_dir" in out



def test_cli_converts_and_reports_errors(tmp_path, capsys):
    backbone = _tiny_backbone_dir(tmp_path)
    state = _release_state(n_refs=64)  # the tiny-clip preset's own N_r
    path = _save(tmp_path, {"projectors": state})
    args = ["convert", "--release-checkpoint", str(path), "--preset", "tiny-clip", "--bundle-backbone", "--backbone-weights", backbone]
    assert main(args + [str(tmp_path / "out")]) == 0
    assert "converted 4 projectors" in capsys.readouterr().out
    loaded = ADPretrainModel.from_pretrained(tmp_path / "out")
    assert all(torch.equal(p.learnable.references, state[f"l{i + 1}_proj.x_ref"][0].float()) for i, p in enumerate(loaded.projectors))
    assert main(args + [str(tmp_path / "out")]) == 1  # non-empty out_dir
    assert "--overwrite" in capsys.readouterr().err
    state["l1_proj.extra"] = torch.ones(1)
    torch.save({"projectors": state}, path)
    assert main(args + [str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err
    assert "unmapped" in err and "'l1_proj.extra'" in err and "hint:" in err

