"""benchmarks/detectors.py runs end to end on tiny features: every method of ours gets a timed row
(its errors are printed and skipped by design, so only a run notices one; a lookup the package
moved once broke PatchCore's row unseen)."""

from __future__ import annotations

import re
import sys

from tests.benchmarks.script_loader import load_benchmark



def test_every_method_of_ours_gets_a_timed_row(monkeypatch, capsys):
    module = load_benchmark("detectors.py", monkeypatch)
    monkeypatch.setattr(sys, "argv", [
        "detectors.py", "--devices", "cpu", "--train", "8", "--test", "4", "--layers", "2", "--channels", "16",
        "--grid", "4", "--image-size", "32", "--batch-size", "4",
    ])
    module.main()
    out = capsys.readouterr().out
    assert "failed:" not in out, out
    for method in ("patchcore", "padim", "padim-concat"):
        row = next((line for line in out.splitlines() if re.match(rf"cpu\s+{method}\s+ours\s", line)), None)
        assert row is not None, out
        fit_s, fit_mib, pred_s = (float(v) for v in row.split()[3:6])
        assert fit_s >= 0 and pred_s >= 0
    patchcore = next(line for line in out.splitlines() if re.match(r"cpu\s+patchcore\s+ours\s", line))
    assert re.search(r"bank \(\d+, 32\), coreset \d+\.\ds", patchcore)  # 2 layers x 16 channels; the coreset was timed
