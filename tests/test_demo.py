"""adpretrain_hf.demo: the quick demo end to end, as a user runs it (`adpretrain demo --quick`)."""

import json
import subprocess
import sys

METHODS = ("featurenorm", "patchcore")
FEATURES = ("backbone", "pretrained")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def test_demo_quick_writes_every_result(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "adpretrain_hf.cli", "demo", "--quick", "--output", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())["results"]
    for category in ("washer", "mean"):
        for method in METHODS:
            for kind in FEATURES:
                for metric in METRICS:
                    value = results[category][method][kind][metric]
                    assert 0.0 <= value <= 1.0, (category, method, kind, metric, value)
    assert (out / "checkpoint" / "model" / "model.safetensors").is_file()
    assert (out / "comparison.png").is_file() and (out / "feature_norm_histograms.png").is_file()
    assert "pretrained features are" in result.stdout  # the honest verdict is printed
