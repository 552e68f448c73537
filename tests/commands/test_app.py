"""`adpretrain app`: its flags, and the one-line errors before anything heavy loads (the page itself: tests/test_app.py)."""

import importlib.util

import pytest

from adpretrain_hf.cli import main
from adpretrain_hf.commands.app import APP_EXTRA_HINT, DEFAULT_HOST, DEFAULT_PORT


def test_help_names_every_flag_and_the_local_default(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["app", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--detector", "--host", "--port", "--threshold"):
        assert flag in text
    assert DEFAULT_HOST == "127.0.0.1" and DEFAULT_HOST in text and str(DEFAULT_PORT) in text


@pytest.mark.parametrize("make, problem", [(lambda p: None, "does not exist"), (lambda p: p.mkdir(), "is not a detector folder")])
def test_a_local_path_that_is_no_detector_is_one_line(tmp_path, capsys, make, problem):
    folder = tmp_path / "det"
    make(folder)
    assert main(["app", "--detector", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and str(folder) in err[0] and problem in err[0] and "adpretrain fit" in err[1]


def test_missing_gradio_names_the_extra(tmp_path, capsys, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["app", "--detector", str(tmp_path)]) == 1
    assert APP_EXTRA_HINT in capsys.readouterr().err


def test_bad_port_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["app", "--detector", "x", "--port", "70000"])
    assert stop.value.code == 2 and "outside 1-65535" in capsys.readouterr().err


def test_runtime_serves_the_exported_graph_or_names_the_export(featurenorm, tmp_path, capsys, monkeypatch):
    pytest.importorskip("gradio")
    import shutil

    from adpretrain_hf import app
    from adpretrain_hf.exported_detector import ExportedDetector

    folder = tmp_path / "fn"
    shutil.copytree(featurenorm, folder)
    assert main(["app", "--detector", str(folder), "--runtime", "onnx"]) == 1
    err = capsys.readouterr().err
    assert "has no exported onnx graph" in err and f"adpretrain export --detector {folder} --format onnx" in err
    assert main(["export", "--detector", str(folder), "--format", "onnx"]) == 0
    served = {}
    monkeypatch.setattr(app, "launch_app", lambda detector, **kwargs: served.update(kwargs, detector=detector))
    assert main(["app", "--detector", str(folder), "--runtime", "onnx"]) == 0
    assert isinstance(served["exported"], ExportedDetector) and served["exported"].runtime == "onnx"
    assert served["device"] == "cpu" and served["detector"] == str(folder)
