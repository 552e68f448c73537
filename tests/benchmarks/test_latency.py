"""benchmarks/latency.py runs end to end on a tiny preset (the benchmarks call the package's public
API, which moves; this run is what notices when a rename breaks them)."""

from __future__ import annotations

import sys

import pytest

from tests.benchmarks.script_loader import load_benchmark



def test_latency_table_on_tiny_preset(monkeypatch, capsys):
    latency = load_benchmark("latency.py", monkeypatch)
    monkeypatch.setattr(sys, "argv", [
        "latency.py", "--preset", "tiny-clip", "--image-size", "64", "--backbone-weights", "random", "--train-images", "2",
        "--batch-sizes", "1", "--threads", "1", "--repeats", "1", "--warmup", "0", "--runtimes", "eager,onnx",
        "--features", "pretrained", "--methods", "patchcore",
    ])
    latency.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| pretrained | patchcore | 1 | 1 |")]
    assert len(rows) == 3, out  # the stage table, the residual-rate row and the search-rate row
    stage_cells = [float(c) for c in rows[0].strip("|").split("|")[4:11]]
    backbone, residual, projector, search, rest, score, piped = stage_cells
    assert min(backbone, residual, projector, score, piped) > 0
    assert backbone + residual + projector + search <= score + 0.2  # parts of one score call (cells rounded to 0.1 ms)
    assert "| search | 64x12x96 |" in rows[2]  # 64 queries (8x8 grid) against the fitted bank
    load_mb, run_mb = (float(v) for v in rows[0].strip("|").split("|")[-1].split("+"))
    assert load_mb > 50 and run_mb >= 0  # the onnxruntime child's peak after loading, and what one run adds


def test_bf16_eager_rows_and_the_runtimes_refused_off_float32_cpu(monkeypatch, capsys):
    latency = load_benchmark("latency.py", monkeypatch)
    tiny = ["--preset", "tiny-clip", "--image-size", "64", "--backbone-weights", "random", "--train-images", "2",
            "--batch-sizes", "1", "--threads", "1", "--repeats", "1", "--warmup", "0", "--features", "pretrained",
            "--methods", "featurenorm"]
    monkeypatch.setattr(sys, "argv", ["latency.py", *tiny, "--dtype", "bf16", "--runtimes", "eager"])
    latency.main()
    out = capsys.readouterr().out
    assert "cpu bf16" in out and any(line.startswith("| pretrained | featurenorm | 1 | 1 |") for line in out.splitlines()), out
    monkeypatch.setattr(sys, "argv", ["latency.py", *tiny, "--dtype", "bf16", "--runtimes", "eager,onnx"])
    with pytest.raises(SystemExit):
        latency.main()
    assert "run in float32 on the CPU" in capsys.readouterr().err
