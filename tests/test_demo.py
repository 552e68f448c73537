"""adpretrain_hf.demo: the quick demo end to end, as a user runs it (`adpretrain demo --quick`)."""

import json
import subprocess
import sys

import pytest
import torch

from adpretrain_hf.demo import summarize

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


def _comparable(payload):
    """results.json without what names the output folder or measures time."""
    runs = [{k: v for k, v in run.items() if not k.endswith("_seconds")} for run in payload["runs"]]
    identity = {k: v for k, v in payload["model_identity"].items() if k != "checkpoint"}
    return {"results": payload["results"], "intervals": payload["intervals"], "runs": runs, "identity": identity,
            "references": payload["references"], "protocol": payload["protocol"]}


@pytest.mark.slow  # two demo runs, ~15 s each on 2 loaded cores: the smallest demo path that diverged
def test_the_demo_twice_with_one_seed_gives_the_same_results(tmp_path):
    """Issue 23.8: the model (projector init, random backbone) was built before any seeding, so
    two runs differed (in-process as across processes); the training loop seeded only after."""
    from adpretrain_hf.demo import DemoSettings, run_demo

    settings = DemoSettings.quick(pretrain_categories=("bottle",), pretrain_normal=2, pretrain_anomalous=2, downstream_normal=3,
                                  downstream_anomalous=2, steps=1, batch_size=4, methods=("featurenorm",))
    first = run_demo(tmp_path / "a", settings, log=lambda message: None)
    torch.manual_seed(12345)  # whatever ran before must not matter
    second = run_demo(tmp_path / "b", settings, log=lambda message: None)
    assert _comparable(first) == _comparable(second)
    on_disk = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("a", "b")]
    assert _comparable(on_disk[0]) == _comparable(on_disk[1])
    assert "[" in summarize(first)  # the verdict carries the intervals


def test_summary_prints_the_paired_intervals():
    scores = dict.fromkeys(METRICS, 0.5)
    entry = {"difference": 0.1, "low": -0.05, "high": 0.25}
    results = {"results": {"mean": {"patchcore": {"backbone": scores, "pretrained": dict.fromkeys(METRICS, 0.6)}}},
               "intervals": {"results": {"mean": {"patchcore": {"pretrained": dict.fromkeys(METRICS, entry)}}}}}
    text = summarize(results)
    assert "I-AUROC +10.0 [-5.0, +25.0]" in text and "contains 0 leaves the sign open" in text


def test_the_verdict_calls_a_difference_only_where_its_interval_excludes_zero():
    """An interval that contains 0 leaves the sign open: the verdict must not call it better or
    worse; one that excludes 0 decides; without intervals the sign of the difference decides."""
    scores = dict.fromkeys(METRICS, 0.5)

    def verdict(low, high, with_intervals=True):
        entry = {"difference": -0.01, "low": low, "high": high}
        results = {"results": {"mean": {"patchcore": {"backbone": scores, "pretrained": dict.fromkeys(METRICS, 0.49)}}}}
        if with_intervals:
            results["intervals"] = {"results": {"mean": {"patchcore": {"pretrained": dict.fromkeys(METRICS, entry)}}}}
        return summarize(results)

    assert "not resolvably different from" in verdict(-0.03, 0.01)
    assert "worse than" in verdict(-0.03, -0.001)
    assert "worse than" in verdict(None, None, with_intervals=False)
