"""The shared trained-detector machinery (trained.py) through CFLOW, GLASS and UniAD on tiny
synthetic data (tests/detectors/trained_helpers.py), and its training loop against loops written
out by hand.

1. Behaviour every method shares: the loss decreases, a bright square is found (sklearn AUROC),
   images are scored independently, bad input fails clearly; config presets and validation.
2. UniAD fitted through the shared loop equals a plain torch loop (same seed, shuffles,
   jitter/dropout noise, StepLR, gradient clipping): identical step losses and weights.
3. A toy detector with one scalar weight ``w`` and SGD, whose trajectory is a closed-form
   recurrence: one optimiser step per yielded loss (the second loss of a batch sees the
   updated ``w``), the per-batch learning rate, the validation mean over batches of
   different sizes, and keep-best restoring the best epoch's weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from adpretrain_hf.detectors.cflow import CFLOW, CFLOWConfig
from adpretrain_hf.detectors.glass import GLASS, GLASSConfig
from adpretrain_hf.detectors.network_module import NetworkModule
from adpretrain_hf.detectors.trained import TrainedConfig, TrainedDetector
from adpretrain_hf.detectors.uniad import UniAD, UniADConfig, UniADModel, align_features
from tests.detectors.trained_helpers import (
    CONFIGS,
    LABELS,
    METHODS,
    TEST,
    TRAIN,
    FakeExtractor,
)



# -- behaviour shared by the three methods -----------------------------------------------
@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_training_loss_decreases(fitted, cls):
    losses = fitted[cls].history.step_losses
    assert len(losses) >= 10 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert len(fitted[cls].history.epoch_losses) == CONFIGS[cls].num_epochs


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_bright_square_is_detected(predictions, cls):
    maps, scores = predictions[cls]
    assert maps.shape == (24, 32, 32) and scores.shape == (24,)  # mixed 8x8 / 4x4 grids -> image size
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    assert roc_auc_score(LABELS, scores.numpy()) > 0.8


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_each_image_is_scored_independently(fitted, predictions, cls):
    """No statistic of the test batch leaks into another image's map (CFLOW's fit-time normaliser)."""
    maps, scores = fitted[cls].predict(TEST[[3, 17]])
    torch.testing.assert_close(maps, predictions[cls][0][[3, 17]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores, predictions[cls][1][[3, 17]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_input_errors(fitted, trained_ext, cls):
    with pytest.raises(RuntimeError, match="not fitted"):
        cls(trained_ext, CONFIGS[cls], progress=False).predict(TEST)
    det = fitted[cls]
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        det.predict(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        det.predict(torch.zeros(2, 1, 32, 32))
    with pytest.raises(TypeError, match="floating point"):
        det.predict(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="fitted layout"):  # a different extractor after fit
        det.module(FakeExtractor(channels=(4, 16))(TEST[:2]), (32, 32))
    with pytest.raises(TypeError, match="config must be"):
        cls(trained_ext, CFLOWConfig() if cls is not CFLOW else GLASSConfig())


def test_config_presets_and_validation(trained_ext):
    assert CFLOW(trained_ext, quick=True, progress=False).config.meta_epochs == 2
    assert CFLOW(trained_ext, epochs=7, progress=False).config.meta_epochs == 7
    assert GLASS(trained_ext, epochs=4, progress=False).config.meta_epochs == 4
    assert UniAD(trained_ext, quick=True, progress=False).config.epochs == 3
    # Published defaults.
    assert (CFLOWConfig().coupling_blocks, CFLOWConfig().clamp_alpha, CFLOWConfig().lr) == (8, 1.9, 2e-4)
    assert (CFLOWConfig().meta_epochs, CFLOWConfig().sub_epochs, CFLOWConfig().fiber_batch) == (25, 8, 256)
    assert (GLASSConfig().meta_epochs, GLASSConfig().ascent_steps, GLASSConfig().dsc_hidden) == (640, 20, 1024)
    assert (UniADConfig().hidden_dim, UniADConfig().jitter_scale, UniADConfig().epochs) == (256, 20.0, 1000)
    for bad in (CFLOWConfig(coupling_blocks=0), CFLOWConfig(condition_dim=30), CFLOWConfig(loss="x"),
                GLASSConfig(variant="x"), GLASSConfig(patchsize=2), UniADConfig(hidden_dim=30, num_heads=4),
                UniADConfig(neighbor_size=(4, 4)), UniADConfig(validation_fraction=1.0),
                UniADConfig(keep_best_on_validation=True), UniADConfig(mixed_precision="fp17")):
        with pytest.raises(ValueError):
            {CFLOWConfig: CFLOW, GLASSConfig: GLASS, UniADConfig: UniAD}[type(bad)](trained_ext, bad)


def test_validation_split_best_epoch_and_rng(trained_ext, capsys):
    """The validation split comes from the training images; fit leaves the global RNG alone and is seeded."""
    cfg = UniADConfig(epochs=3, hidden_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                      dim_feedforward=16, batch_size=4, lr=1e-3, validation_fraction=0.25, keep_best_on_validation=True)
    state = torch.get_rng_state()
    a = UniAD(trained_ext, cfg, progress=False).fit(TRAIN)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(a.history.val_losses) == 3 and a.history.best_epoch == min(range(3), key=a.history.val_losses.__getitem__)
    b = UniAD(trained_ext, cfg, progress=False).fit(TRAIN)
    assert torch.equal(a.predict(TEST[:4])[0], b.predict(TEST[:4])[0])  # same seed, same model
    assert capsys.readouterr().err == ""  # progress=False is silent
    with pytest.raises(ValueError, match="leaves no training image"):
        UniAD(trained_ext, UniADConfig(epochs=1, validation_fraction=0.99), progress=False).fit(TRAIN[:2])


# -- the shared loop against a plain torch loop (UniAD) -----------------------------------
class ConvExtractor:
    """Fixed random conv stack: ``[B, 3, 32, 32]`` -> ``[[B, 8, 8, 8], [B, 16, 4, 4]]`` (two CNN-like stages)."""

    feature_kind, image_size, device = "backbone", (32, 32), torch.device("cpu")

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.w1, self.w2 = torch.randn(8, 3, 4, 4, generator=g) / 4.0, torch.randn(16, 8, 2, 2, generator=g) / 4.0

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = F.leaky_relu(F.conv2d(x, self.w1, stride=4), 0.1)
        return [f1, F.leaky_relu(F.conv2d(f1, self.w2, stride=2), 0.1)]


LOOP_TRAIN = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.2


def test_uniad_loop_equals_a_plain_torch_loop():
    cfg = UniADConfig(epochs=4, hidden_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=16,
                      lr=1e-3, batch_size=8, lr_step_fraction=0.5, clip_grad_norm=0.05, seed=3)
    trained_ext = ConvExtractor()
    det = UniAD(trained_ext, cfg, progress=False, batch_size=32).fit(LOOP_TRAIN)  # one extraction batch, as below
    device, n = det.device, LOOP_TRAIN.shape[0]

    feats = trained_ext(LOOP_TRAIN)
    losses = []
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        model = UniADModel(sum(f.shape[1] for f in feats), (4, 4), cfg).to(device)  # grid: the coarsest layer
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        model.train()
        for epoch in range(cfg.epochs):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (cfg.lr_gamma if epoch >= cfg.epochs // 2 else 1.0)
            order = torch.randperm(n)
            for start in range(0, n, cfg.batch_size):  # 24 images: three full batches
                idx = order[start : start + cfg.batch_size]
                x = align_features([f[idx].to(device) for f in feats], (4, 4))
                loss = F.mse_loss(model(x), x)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                opt.step()
                losses.append(loss.item())

    tol = {"rtol": 0.0, "atol": 0.0} if device.type == "cpu" else {}  # bitwise on the CPU; GPU kernels may not be deterministic
    assert len(losses) == cfg.epochs * 3
    torch.testing.assert_close(torch.tensor(det.history.step_losses), torch.tensor(losses), **tol)
    fitted = det.model.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(fitted[name], value, **tol, msg=name)


# -- a toy detector whose loop is a closed-form recurrence --------------------------------
VALUE, VAL_SHIFT, LR, DECAY = 8.0, 3.0, 0.05, 0.9


class ToyExtractor:
    """``[B, 3, 2, 2]`` -> one layer ``[B, 1, 1, 1]``: the first pixel."""

    feature_kind, image_size, device = "backbone", (2, 2), torch.device("cpu")

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x[:, :1, :1, :1]]


@dataclass
class ToyConfig(TrainedConfig):
    epochs: int = 1


class ScalarModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))


class ToyModule(NetworkModule):
    """Scores the first channel minus ``w`` (not registered: a test double)."""

    method = "toy"
    config_class = ToyConfig

    def build_net(self) -> nn.Module:
        return ScalarModel()

    def score_grids(self, features):
        return [features[0][:, 0] - self.net.w], None


class Toy(TrainedDetector):
    """Loss ``(w - mean of the batch)^2`` twice per batch; validation ``(w - (x - 3))^2`` per image."""

    name = "toy"
    config_class = ToyConfig
    module_class = ToyModule
    default_sigma = 0.0

    def _make_optimizers(self, model: nn.Module) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(model.parameters(), lr=1.0)]  # the schedule below sets the lr

    def _learning_rate(self, epoch: int, index: int, train: list[torch.Tensor]) -> float:
        return LR * DECAY**epoch

    def _batch_losses(self, batch: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        for _ in range(2):
            yield (self.model.w - batch[0].mean()) ** 2

    def _validation_sums(self, batch: list[torch.Tensor]) -> Iterator[tuple[float, int]]:
        per_image = (self.model.w - (batch[0].flatten() - VAL_SHIFT)) ** 2
        yield per_image.sum().item(), per_image.numel()


def toy_trajectory(epochs: int, steps_per_epoch: int) -> tuple[list[float], list[float]]:
    """Hand recurrence of SGD on ``(w - VALUE)^2``: the loss before each step, ``w`` after each epoch."""
    w, losses, ends = 0.0, [], []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            losses.append((w - VALUE) ** 2)
            w -= LR * DECAY**epoch * 2 * (w - VALUE)
        ends.append(w)
    return losses, ends


def test_toy_loop_steps_once_per_yielded_loss_with_the_schedule():
    images = torch.full((8, 3, 2, 2), VALUE)
    det = Toy(ToyExtractor(), ToyConfig(epochs=5, batch_size=4), progress=False).fit(images)
    losses, ends = toy_trajectory(5, steps_per_epoch=2 * 2)  # 2 batches x 2 losses each
    torch.testing.assert_close(torch.tensor(det.history.step_losses), torch.tensor(losses), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(det.model.w.detach(), torch.tensor(ends[-1]))
    # Validation loss: the mean over all images, here in batches of 3 and 1 (self.batch_size=3).
    det.batch_size = 3
    held_out = [1.0, 2.0, 4.0, 16.0]
    val = det._validation_loss([torch.tensor(held_out).reshape(4, 1, 1, 1)])
    assert abs(val - sum((ends[-1] - (x - VAL_SHIFT)) ** 2 for x in held_out) / 4) < 1e-3


def test_toy_keep_best_restores_the_best_epoch():
    """w climbs from 0 towards 8: the epoch ending closest to 8 - 3 = 5 is best, and its weight is what stays."""
    images = torch.full((8, 3, 2, 2), VALUE)
    cfg = ToyConfig(epochs=8, batch_size=4, validation_fraction=0.5, keep_best_on_validation=True)
    det = Toy(ToyExtractor(), cfg, progress=False).fit(images)
    _, ends = toy_trajectory(8, steps_per_epoch=2)  # 4 training images: one batch x 2 losses
    val = [(w - (VALUE - VAL_SHIFT)) ** 2 for w in ends]
    best = min(range(8), key=val.__getitem__)
    assert 0 < best < 7 and det.history.best_epoch == best
    torch.testing.assert_close(torch.tensor(det.history.val_losses), torch.tensor(val), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(det.model.w.detach(), torch.tensor(ends[best]))
