"""Phase telemetry (issue 20): shares against plain torch, on its own and on the real loop; the
optional stop rule (ours) on the loop."""

from __future__ import annotations

import json

import pytest
import torch

from adpretrain_hf.losses import RELEASE_LOSS_OPTIONS, ADPretrainLoss
from adpretrain_hf.training.arguments import PretrainArguments
from adpretrain_hf.training.telemetry import PhaseStopRule, layer_values, phase_counts, phase_record, progress_summary


def _plain_phase(views, labels, radius=0.4, margin=0.75, adaptive=True):
    """Shares and mean norms written out: A = sqrt(||x|| + 1) - 1, r per view = min(0.9 min A_anomalous, radius)."""
    inside = normal = beyond = anomalous = 0
    sum_normal = sum_anomalous = radius_sum = 0.0
    for x in views:
        a = torch.sqrt(x.double().norm(dim=-1) + 1) - 1
        r = min(0.9 * a[labels].min().item(), radius) if adaptive and labels.any() else radius
        inside += int(((a <= r) & ~labels).sum())
        normal += int((~labels).sum())
        beyond += int(((a >= r + margin) & labels).sum())
        anomalous += int(labels.sum())
        sum_normal += a[~labels].sum().item()
        sum_anomalous += a[labels].sum().item()
        radius_sum += r
    return inside / normal, beyond / anomalous, sum_normal / normal, sum_anomalous / anomalous, radius_sum / len(views)


def test_shares_against_plain_torch():
    g = torch.Generator().manual_seed(0)
    loss_fn = ADPretrainLoss(RELEASE_LOSS_OPTIONS)
    views = [[torch.randn(2, 16, 8, generator=g) * s for s in (0.05, 1.0)] for _ in range(2)]  # 2 views x 2 layers
    labels = [torch.rand(2, 16, generator=g) < 0.3 for _ in range(2)]
    record = phase_record(phase_counts(views, labels, loss_fn), angle=[-2.0, 0.0], norm_views=[3.0, 1.0])
    for layer in range(2):
        expected = _plain_phase([views[0][layer], views[1][layer]], labels[layer])
        got = [record[f"phase/{k}/layer_{layer}"] for k in ("normal_inside_r", "anomalous_beyond", "norm_normal", "norm_anomalous", "radius")]
        assert got == pytest.approx(expected, rel=1e-5)
    assert record["phase/norm_angle_ratio/layer_0"] == pytest.approx(1.5)
    assert record["phase/norm_angle_ratio/layer_1"] is None  # angle 0: no ratio
    assert 0 < record["phase/normal_inside_r/layer_0"] and record["phase/normal_inside_r/layer_1"] < 1  # not vacuous
    assert record["phase/radius/layer_0"] < 0.4  # the adaptive cap bit (layer 0's norms are small)


def test_progress_summary_and_layer_values():
    record = {"phase/normal_inside_r/layer_10": 0.5, "phase/normal_inside_r/layer_2": 0.9, "phase/anomalous_beyond/layer_0": None}
    assert layer_values(record, "normal_inside_r") == [0.9, 0.5]
    assert progress_summary(record) == {"in_r": "0.50"}


def test_stop_rule_needs_every_layer_for_patience_steps():
    rule = PhaseStopRule(0.9, patience=2)
    good = {"phase/normal_inside_r/layer_0": 0.95, "phase/normal_inside_r/layer_1": 0.9}
    bad = {**good, "phase/normal_inside_r/layer_1": 0.89}
    assert [rule.update(r) for r in (good, bad, good, good)] == [False, False, False, True]
    assert not PhaseStopRule(0.9, 1).update({"phase/normal_inside_r/layer_0": None})
    for share, patience in ((0.0, 1), (1.5, 1), (0.9, 0)):
        with pytest.raises(ValueError, match="invalid"):
            PhaseStopRule(share, patience)


def _args(root, out, **extra):
    return PretrainArguments(
        data_root=str(root), output_dir=str(out), preset="tiny-clip", batch_size=4, num_workers=0,
        mixed_precision="no", progress=False, epochs=5, **extra,
    )


def test_loop_logs_the_phase_of_the_batch_it_trained_on(realiad_root, tmp_path):
    from adpretrain_hf.training.loop import Pretrainer

    trainer = Pretrainer(_args(realiad_root, tmp_path / "run", max_steps=2, model={"training_reference_shots": [1]}))
    seen = []
    original = trainer.loss_fn.forward

    def forward(f1, f2, labels, centers, norm_labels):
        seen.append(([f.detach().clone() for f in f1], [f.detach().clone() for f in f2], [n.clone() for n in norm_labels]))
        return original(f1, f2, labels, centers, norm_labels)

    trainer.loss_fn.forward = forward  # the loss module itself stays (the telemetry reads its radius, margin)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == len(seen) == 2
    for record, (f1, f2, labels) in zip(records, seen):
        for layer in range(len(f1)):
            if not labels[layer].any() or labels[layer].all():
                continue
            expected = _plain_phase([f1[layer], f2[layer]], labels[layer])
            got = [record[f"phase/{k}/layer_{layer}"] for k in ("normal_inside_r", "anomalous_beyond", "norm_normal", "norm_anomalous", "radius")]
            assert got == pytest.approx(expected, rel=1e-4)
            assert record[f"phase/norm_angle_ratio/layer_{layer}"] == pytest.approx(
                record[f"norm/layer_{layer}"] * 2 / abs(record[f"angle/layer_{layer}"]), rel=1e-4)


@pytest.mark.parametrize("share,steps", [(None, 5), (0.9, 2)])
def test_loop_stop_rule(realiad_root, tmp_path, share, steps):
    """A radius no tiny-model feature reaches (n = sqrt(||x|| + 1) - 1 stays far below 20) puts every
    normal patch inside r from step 1: with the rule on (patience 2) the loop stops after 2 logged
    steps and says why; off (the default) it runs all 5. (No inner push: it would push every normal
    patch out towards 0.99 r.)"""
    from adpretrain_hf.training.loop import Pretrainer

    model = {"training_reference_shots": [1], "hypersphere_radius": 20.0, "adaptive_radius": False, "push_inner_normals": False}
    args = _args(realiad_root, tmp_path / "run", max_steps=5, model=model, stop_normal_inside_share=share, stop_patience=2)
    Pretrainer(args).train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == steps
    assert all(v == 1.0 for r in records for v in layer_values(r, "normal_inside_r"))
    assert ("stopped_by" in records[-1]) is (share is not None)
