"""The pretraining loop's center c: the mean of the *normal* patches' features, both modes.

Runs a few steps of the real ``Pretrainer`` on a tiny synthetic Real-IAD tree and recomputes
c from the very batches the loop saw, with plain torch (block means of the masks for the
labels, masked means for the center, the EMA written out by hand).
"""

from __future__ import annotations

import pytest
import torch

from adpretrain_hf.data import generate_dataset
from adpretrain_hf.training.arguments import PretrainArguments
from adpretrain_hf.training.loop import Pretrainer

CENTER_BATCHES = 2
MAX_STEPS = 3
MOMENTUM = 0.5  # far from 1 so that a wrong update is visible after one step
# These tests check our center estimation from augmented batches with the fraction label rule
# (the release's one-pass center is tested in test_center.py and tests/release_parity/).
OURS = {"center_estimation": "batches", "patch_label_rule": "fraction"}


def _independent_labels(masks: torch.Tensor, grid: int, fraction: float) -> torch.Tensor:
    """``[B, H, W]`` {0,1} masks -> ``[B, grid*grid]`` bool, True = anomalous (block mean > fraction)."""
    b, h, w = masks.shape
    blocks = masks.float().reshape(b, grid, h // grid, grid, w // grid).mean(dim=(2, 4))
    return (blocks > fraction).reshape(b, -1)


def _normal_mean(feats: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
    """Mean of the rows of ``feats [B, N, D]`` whose label is False, over all given batches."""
    rows = torch.cat([f.reshape(-1, f.shape[-1])[~l.reshape(-1)] for f, l in zip(feats, labels)])
    return rows.double().mean(dim=0)


@pytest.mark.parametrize("center_mode", ["residual", "projected"])
def test_loop_center_is_the_mean_of_normal_patches(realiad_root, tmp_path, center_mode):
    args = PretrainArguments(
        data_root=str(realiad_root), output_dir=str(tmp_path / "run"), preset="tiny-clip",
        model={"center_mode": center_mode, "training_reference_shots": [1], **OURS}, epochs=1, batch_size=4,
        max_steps=MAX_STEPS, num_workers=0, center_batches=CENTER_BATCHES, center_momentum=MOMENTUM,
        mixed_precision="no", progress=False, checkpoints_total_limit=1,
    )
    trainer = Pretrainer(args)
    config = trainer.config
    grid = config.image_size // config.patch_size
    seen: list[dict] = []  # one record per _residuals call: masks, res1, projected res1 (estimation)
    losses: list[dict] = []  # one record per loss call: feats1, centers given

    original_residuals = trainer._residuals

    def residuals(batch):
        res1, res2, labels, norm_labels, banks = original_residuals(batch)
        record = {"masks": batch["mask"].clone(), "res1": [r.clone() for r in res1]}
        if not losses:  # estimation phase: the head still has its initial weights
            with torch.no_grad():
                record["proj1"] = [p.clone() for p in trainer.head(res1, banks)]
        seen.append(record)
        return res1, res2, labels, norm_labels, banks

    original_loss = trainer.loss_fn.forward

    def loss_fn(feats1, feats2, labels, centers, norm_labels):
        losses.append({"feats1": [f.detach().clone() for f in feats1], "centers": [c.detach().clone() for c in centers],
                       "masks": seen[-1]["masks"]})
        return original_loss(feats1, feats2, labels, centers, norm_labels)

    trainer._residuals, trainer.loss_fn.forward = residuals, loss_fn  # the loss module stays (telemetry reads it)
    trainer.train()

    estimation = seen[:CENTER_BATCHES]
    assert len(losses) == MAX_STEPS
    fraction = config.patch_anomaly_fraction
    labels = [_independent_labels(r["masks"], grid, fraction) for r in estimation]
    assert any(l.any() for l in labels) and any((~l).any() for l in labels), "test data needs both patch kinds"
    key = "res1" if center_mode == "residual" else "proj1"
    for layer in range(len(config.layers)):
        expected = _normal_mean([r[key][layer] for r in estimation], labels)
        torch.testing.assert_close(losses[0]["centers"][layer].double(), expected, rtol=1e-4, atol=1e-5)

    # During training: fixed (residual) or an EMA over view 1's normal projected patches (projected).
    for step in range(1, MAX_STEPS):
        for layer in range(len(config.layers)):
            previous = losses[step - 1]
            if center_mode == "residual":
                expected = losses[0]["centers"][layer].double()
            else:
                step_labels = _independent_labels(previous["masks"], grid, fraction)
                if not (~step_labels).any():
                    expected = previous["centers"][layer].double()
                else:
                    batch_mean = _normal_mean([previous["feats1"][layer]], [step_labels])
                    expected = MOMENTUM * previous["centers"][layer].double() + (1 - MOMENTUM) * batch_mean
            torch.testing.assert_close(losses[step]["centers"][layer].double(), expected, rtol=1e-4, atol=1e-5)


def test_center_estimation_works_when_the_first_batches_hold_no_anomaly(tmp_path):
    """Only normal patches in the estimation batches (masks blanked): c is their mean of all patches
    (the old, inverted labels left no row to average and raised)."""
    root = tmp_path / "data"
    generate_dataset(root, layout="realiad", categories=["bottle"], num_normal=4, num_anomalous=2,
                     image_size=64, seed=1, num_views=1, progress=False)
    args = PretrainArguments(
        data_root=str(root), output_dir=str(tmp_path / "run"), preset="tiny-clip",
        model={"center_mode": "residual", "training_reference_shots": [1], **OURS}, batch_size=2, num_workers=0,
        center_batches=3, mixed_precision="no", progress=False,
    )
    trainer = Pretrainer(args)
    records = []
    original = trainer._residuals

    def residuals(batch):
        batch = {**batch, "mask": torch.zeros_like(batch["mask"])}
        out = original(batch)
        records.append((batch["mask"].clone(), [r.clone() for r in out[0]]))
        return out

    trainer._residuals = residuals
    centers = trainer.estimate_centers()
    grid = trainer.config.image_size // trainer.config.patch_size
    labels = [_independent_labels(m, grid, trainer.config.patch_anomaly_fraction) for m, _ in records]
    assert not any(l.any() for l in labels)
    for layer, center in enumerate(centers):
        expected = _normal_mean([r[layer] for _, r in records], labels)
        torch.testing.assert_close(center.double(), expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- release mode, assembled


def _release_labels_by_hand(masks: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Angle term: > 32 defect pixels per (H // grid)-pixel patch; norm term: the patch's top-left pixel."""
    b, h, w = masks.shape
    p = h // grid
    counts = masks.float()[:, : grid * p, : grid * p].reshape(b, grid, p, grid, p).sum(dim=(2, 4))
    return (counts > 32).reshape(b, -1), (masks[:, ::p, ::p][:, :grid, :grid] > 0.5).reshape(b, -1)


def _release_loss_by_hand(f1, f2, angle_labels, norm_labels, centers, tau=0.15, r0=0.4, margin=0.75):
    """The release's step loss in plain torch (main.py's combination of its two loss functions)."""
    total = 0.0
    for x1, x2, lab, nlab, c in zip(f1, f2, angle_labels, norm_labels, centers):
        d = x1.shape[-1]
        lab2 = torch.cat([lab.reshape(-1), lab.reshape(-1)])
        if lab2.all() or not lab2.any():
            angle = 0.0  # the release's -inf -> 0
        else:
            z = torch.nn.functional.normalize(torch.cat([x1.reshape(-1, d), x2.reshape(-1, d)]) - c, dim=1)
            sim = z @ z.T / tau
            half = z.shape[0] // 2
            positive = sim[torch.arange(2 * half), (torch.arange(2 * half) + half) % (2 * half)]
            negatives = torch.where(lab2[None, :] != lab2[:, None], sim.exp(), torch.zeros_like(sim)).sum(dim=1)
            angle = -(positive.exp() / negatives).log().mean()
        total = total + angle
        for x in (x1, x2):
            a = torch.sqrt(x.reshape(-1, d).norm(dim=1) + 1) - 1
            m = nlab.reshape(-1)
            r = min(0.9 * a[m].min().item(), r0) if m.any() else r0
            parts = [(~m & (a > r), a - r), (~m & (a < 0.99 * r), 0.99 * r - a), (m & (a < r + margin), r + margin - a)]
            for active, dist in parts:
                if active.any():
                    total = total + (torch.nn.functional.softplus(dist) * dist.detach().exp())[active].mean()
    return total


def test_release_mode_step_equals_the_loss_functions_applied_by_hand(realiad_root, tmp_path):
    """One optimisation step of the real loop in release mode: the loss it logs equals the release's
    loss recomputed by hand (labels from the masks, projection with the initial weights, plain-torch
    angle and norm terms), and Adam's first step moved the projector weights along that loss's gradient."""
    import copy
    import json

    from adpretrain_hf.losses import RELEASE_LOSS_FORM

    args = PretrainArguments(
        data_root=str(realiad_root), output_dir=str(tmp_path / "run"), preset="tiny-clip",
        model={**RELEASE_LOSS_FORM, "training_reference_shots": [1, 4, 8]}, epochs=1, batch_size=4, max_steps=1,
        num_workers=0, mixed_precision="no", progress=False, skip_normal_only_batches=True, learning_rate=1e-3,
    )
    trainer = Pretrainer(args)
    initial = copy.deepcopy(trainer.model).eval()
    seen = []
    original = trainer._residuals

    def residuals(batch):
        out = original(batch)
        seen.append({"masks": batch["mask"].clone(), "res1": [r.clone() for r in out[0]], "res2": [r.clone() for r in out[1]]})
        return out

    trainer._residuals = residuals
    trainer.train()
    assert len(seen) == 1 and seen[0]["masks"].any()
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    grids = trainer.model.grid_sizes
    labels = [_release_labels_by_hand(seen[0]["masks"], g[0]) for g in grids]
    assert any(a.any() for a, _ in labels), "the step needs anomalous patches"
    f1, f2 = initial.project(seen[0]["res1"]), initial.project(seen[0]["res2"])
    centers = [c.detach() for c in trainer.state.initial_centers]
    by_hand = _release_loss_by_hand(f1, f2, [a for a, _ in labels], [n for _, n in labels], centers)
    assert by_hand.item() == pytest.approx(logged, rel=1e-5)

    # Adam's first step: theta_1 - theta_0 = -lr * g' / (|g'| + eps), g' = grad + weight_decay * theta_0.
    params = [p for p in initial.projectors.parameters()]
    grads = torch.autograd.grad(by_hand, params, allow_unused=True)
    trained = dict(trainer.model.projectors.named_parameters())
    agree, total = 0, 0
    for (name, p0), g in zip(initial.projectors.named_parameters(), grads):
        g = (torch.zeros_like(p0) if g is None else g) + args.weight_decay * p0.detach()
        expected = -args.learning_rate * g / (g.abs() + 1e-8)
        big = g.abs() > 1e-5
        agree += torch.isclose(trained[name].detach() - p0.detach(), expected, rtol=1e-2, atol=1e-7)[big].sum().item()
        total += big.sum().item()
    assert total > 0 and agree / total > 0.99, (agree, total)
