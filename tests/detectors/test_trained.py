"""CFLOW, GLASS and UniAD (the trained detectors) on tiny synthetic data.

The easy case every method must solve: *normal* images are smooth, low-amplitude noise
textures (a 4x4 Gaussian field, std 0.2, bilinearly upsampled to 32x32); *anomalous*
images are the same kind of texture with a bright (value 2.0), high-contrast 8x8 square
pasted at a random place. A fixed random conv stack turns 32x32 images into two layers on
different grids (8 channels at 8x8, 16 channels at 4x4), like CNN stages.

References are computed independently here: autograd Jacobians for the flow's log-det,
explicit formulas / loops for the positional encoding, ring projection, feature
alignment and neighbour mask, sklearn for AUROC.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from adpretrain_hf.detectors.cflow import CFLOW, CFLOWConfig, ConditionalFlow, positional_encoding_2d
from adpretrain_hf.detectors.glass import GLASS, GLASSConfig, embed_features, project_to_ring
from adpretrain_hf.detectors.trained import CONFIG_FILE, TrainedDetector
from adpretrain_hf.detectors.uniad import (
    EncoderLayer,
    UniAD,
    UniADConfig,
    align_features,
    neighbor_mask,
    scaled_neighbor_size,
)


class FakeExtractor:
    """Fixed random conv stack: ``[B, 3, 32, 32]`` -> ``[[B, 8, 8, 8], [B, 16, 4, 4]]``."""

    image_size = (32, 32)
    device = torch.device("cpu")

    def __init__(self, kind: str = "backbone", seed: int = 0, channels: tuple[int, int] = (8, 16)) -> None:
        g = torch.Generator().manual_seed(seed)
        self.kind = kind
        self.w1 = torch.randn(channels[0], 3, 4, 4, generator=g) / 4.0
        self.w2 = torch.randn(channels[1], channels[0], 2, 2, generator=g) / 4.0

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = F.leaky_relu(F.conv2d(x, self.w1, stride=4), 0.1)
        return [f1, F.leaky_relu(F.conv2d(f1, self.w2, stride=2), 0.1)]


def textures(n: int, seed: int, defect: bool = False) -> torch.Tensor:
    """Smooth low-amplitude noise ``[n, 3, 32, 32]``; with ``defect`` a bright 8x8 square each."""
    g = torch.Generator().manual_seed(seed)
    imgs = F.interpolate(torch.randn(n, 3, 4, 4, generator=g) * 0.2, size=(32, 32), mode="bilinear", align_corners=False)
    if defect:
        for i in range(n):
            y, x = torch.randint(0, 24, (2,), generator=g).tolist()
            imgs[i, :, y : y + 8, x : x + 8] = 2.0
    return imgs


TRAIN = textures(24, seed=1)
TEST = torch.cat([textures(12, seed=2), textures(12, seed=3, defect=True)])
LABELS = [0] * 12 + [1] * 12

# Tiny but complete configurations (published defaults are the dataclass defaults).
CONFIGS = {
    CFLOW: CFLOWConfig(meta_epochs=3, sub_epochs=2, batch_size=8, coupling_blocks=4, condition_dim=32, lr=1e-3, lr_warm_epochs=0),
    GLASS: GLASSConfig(meta_epochs=5, dsc_hidden=32, embed_dim=None, lr=1e-2, dsc_lr=2e-2),
    UniAD: UniADConfig(epochs=5, hidden_dim=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1,
                       dim_feedforward=64, lr=1e-3, batch_size=4),
}
METHODS = list(CONFIGS)


@pytest.fixture(scope="module")
def ext() -> FakeExtractor:
    return FakeExtractor()


@pytest.fixture(scope="module")
def fitted(ext) -> dict[type, TrainedDetector]:
    """Each method fitted once on the normal textures (reused by the tests below)."""
    return {cls: cls(ext, cfg, progress=False, batch_size=16).fit(TRAIN) for cls, cfg in CONFIGS.items()}


@pytest.fixture(scope="module")
def predictions(fitted) -> dict[type, tuple[torch.Tensor, torch.Tensor]]:
    return {cls: det.predict(TEST) for cls, det in fitted.items()}


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
def test_save_load_gives_identical_predictions(fitted, predictions, ext, cls, tmp_path):
    fitted[cls].save(tmp_path)
    loaded = cls.load(tmp_path, ext, progress=False)
    maps, scores = loaded.predict(TEST)
    assert torch.equal(maps, predictions[cls][0]) and torch.equal(scores, predictions[cls][1])
    assert loaded.config == fitted[cls].config and loaded.history.epoch_losses == fitted[cls].history.epoch_losses


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_each_image_is_scored_independently(fitted, predictions, cls):
    """No statistic of the test batch leaks into another image's map (CFLOW's fit-time normaliser)."""
    maps, scores = fitted[cls].predict(TEST[[3, 17]])
    torch.testing.assert_close(maps, predictions[cls][0][[3, 17]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores, predictions[cls][1][[3, 17]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_input_errors(fitted, ext, cls):
    with pytest.raises(RuntimeError, match="not fitted"):
        cls(ext, CONFIGS[cls], progress=False).predict(TEST)
    det = fitted[cls]
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        det.predict(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        det.predict(torch.zeros(2, 1, 32, 32))
    with pytest.raises(TypeError, match="floating point"):
        det.predict(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="fitted layout"):  # a different extractor after fit
        det._score_grids(FakeExtractor(channels=(4, 16))(TEST[:2]))
    with pytest.raises(TypeError, match="config must be"):
        cls(ext, CFLOWConfig() if cls is not CFLOW else GLASSConfig())


def test_config_presets_and_validation(ext):
    assert CFLOW(ext, quick=True, progress=False).config.meta_epochs == 2
    assert CFLOW(ext, epochs=7, progress=False).config.meta_epochs == 7
    assert GLASS(ext, epochs=4, progress=False).config.meta_epochs == 4
    assert UniAD(ext, quick=True, progress=False).config.epochs == 3
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
            {CFLOWConfig: CFLOW, GLASSConfig: GLASS, UniADConfig: UniAD}[type(bad)](ext, bad)


def test_validation_split_best_epoch_and_rng(ext, capsys):
    """The validation split comes from the training images; fit leaves the global RNG alone and is seeded."""
    cfg = UniADConfig(epochs=3, hidden_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                      dim_feedforward=16, batch_size=4, lr=1e-3, validation_fraction=0.25, keep_best_on_validation=True)
    state = torch.get_rng_state()
    a = UniAD(ext, cfg, progress=False).fit(TRAIN)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(a.history.val_losses) == 3 and a.history.best_epoch == min(range(3), key=a.history.val_losses.__getitem__)
    b = UniAD(ext, cfg, progress=False).fit(TRAIN)
    assert torch.equal(a.predict(TEST[:4])[0], b.predict(TEST[:4])[0])  # same seed, same model
    assert capsys.readouterr().err == ""  # progress=False is silent
    with pytest.raises(ValueError, match="leaves no training image"):
        UniAD(ext, UniADConfig(epochs=1, validation_fraction=0.99), progress=False).fit(TRAIN[:2])


def test_state_saved_before_the_rename_loads(ext, tmp_path):
    """Folders written before issue 14 hold the positions under ``"layers"``: they load the same."""
    config = UniADConfig(epochs=1, hidden_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                         dim_feedforward=32, batch_size=8)
    det = UniAD(ext, config, layer_positions=[1], progress=False).fit(TRAIN[:8])
    det.save(tmp_path)
    settings = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert settings["layer_positions"] == [1] and "layers" not in settings
    settings["layers"] = settings.pop("layer_positions")  # the previous release's file
    (tmp_path / CONFIG_FILE).write_text(json.dumps(settings))
    loaded = UniAD.load(tmp_path, ext, progress=False)
    assert loaded.layer_positions == [1]
    for got, want in zip(loaded.predict(TEST[:4]), det.predict(TEST[:4])):
        assert torch.equal(got, want)


def test_load_refuses_another_detector(fitted, ext, tmp_path):
    fitted[GLASS].save(tmp_path)
    assert (tmp_path / CONFIG_FILE).is_file()
    with pytest.raises(ValueError, match="'glass' detector"):
        UniAD.load(tmp_path, ext)
    with pytest.raises(RuntimeError, match="not fitted"):
        UniAD(ext).save(tmp_path / "x")


# -- CFLOW ---------------------------------------------------------------------------------
def test_positional_encoding_matches_formula():
    enc = positional_encoding_2d(8, 3, 5)  # half = 4: frequencies 1 and 1/100
    i, j = torch.meshgrid(torch.arange(3.0), torch.arange(5.0), indexing="ij")
    expected = torch.stack([torch.sin(j), torch.cos(j), torch.sin(j / 100), torch.cos(j / 100),
                            torch.sin(i), torch.cos(i), torch.sin(i / 100), torch.cos(i / 100)])
    torch.testing.assert_close(enc, expected)


@pytest.mark.parametrize("soft", [True, False])
def test_flow_log_det_matches_autograd_jacobian(soft):
    torch.manual_seed(0)
    flow = ConditionalFlow(5, CFLOWConfig(coupling_blocks=3, condition_dim=4, permute_soft=soft)).double()
    for p in flow.parameters():  # move away from the identity-like initialisation
        p.data.add_(0.3 * torch.randn_like(p))
    x, c = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    _, log_det = flow(x, c)
    for n in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None], c[n : n + 1])[0][0], x[n])
        torch.testing.assert_close(log_det[n], torch.linalg.slogdet(jac)[1])


def test_cflow_normaliser_is_the_training_maximum(fitted, ext):
    """``M_l`` is the max per-dim log-likelihood over training positions: training grids reach 0, never below."""
    grids = fitted[CFLOW]._score_grids(ext(TRAIN))
    for g in grids:
        assert g.min().abs() < 1e-5


# -- GLASS ---------------------------------------------------------------------------------
def test_ring_projection():
    torch.manual_seed(0)
    anchor, pts = torch.randn(50, 6), torch.randn(50, 6) * torch.rand(50, 1) * 6
    out = project_to_ring(pts, anchor, 1.0, 2.0)
    d_in, d_out = (pts - anchor).norm(dim=1), (out - anchor).norm(dim=1)
    assert ((d_out > 1.0 - 1e-5) & (d_out < 2.0 + 1e-5)).all()
    torch.testing.assert_close(F.cosine_similarity(out - anchor, pts - anchor), torch.ones(50))
    inside = (d_in >= 1.0) & (d_in <= 2.0)
    torch.testing.assert_close(out[inside], pts[inside])


def test_glass_defaults_by_feature_kind():
    pre, back = GLASS(FakeExtractor(kind="pretrained")), GLASS(FakeExtractor(kind="backbone"))
    assert (pre.config.adaptor, pre.config.noise_std) == ("identity", 0.005)
    assert (back.config.adaptor, back.config.noise_std) == ("linear", 0.015)
    assert GLASS(FakeExtractor(kind="pretrained"), GLASSConfig(adaptor="linear", noise_std=0.1)).config.noise_std == 0.1
    with pytest.raises(ValueError, match="extractor.kind"):
        GLASS(FakeExtractor(kind="other"))


def test_glass_embedding_against_explicit_computation(ext):
    feats = ext(TEST[:2])
    up = F.interpolate(feats[1], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(embed_features(feats, 1, None), torch.cat([feats[0], up], dim=1))
    local = embed_features(feats, 3, None)  # interior position: the plain 3x3 mean
    torch.testing.assert_close(local[:, :8, 4, 5], feats[0][:, :, 3:6, 4:7].mean(dim=(2, 3)))
    assert embed_features(feats, 3, 12).shape == (2, 12, 8, 8)


def test_glass_image_score_is_max_of_raw_patch_scores(fitted, predictions, ext):
    raw = fitted[GLASS]._score_grids(ext(TEST))[0]
    assert raw.shape == (24, 8, 8)  # the first (finest) layer's grid
    torch.testing.assert_close(predictions[GLASS][1], raw.flatten(1).amax(dim=1))


def test_glass_image_synthesis_branch(ext, tmp_path):
    def paste_square(images):
        masks = torch.zeros(images.shape[0], 32, 32)
        masks[:, 8:16, 8:16] = 1
        return images + 2.0 * masks[:, None], masks

    cfg = GLASSConfig(meta_epochs=2, dsc_hidden=16, embed_dim=None, image_synthesis=True, ascent_steps=5)
    det = GLASS(ext, cfg, synthesizer=paste_square, progress=False).fit(TRAIN[:8])
    assert all(math.isfinite(x) for x in det.history.step_losses) and det.predict(TEST[:2])[0].shape == (2, 32, 32)
    det.save(tmp_path)  # reloads for prediction without the synthesizer
    assert torch.equal(GLASS.load(tmp_path, ext, progress=False).predict(TEST[:2])[1], det.predict(TEST[:2])[1])
    with pytest.raises(ValueError, match="synthesizer"):
        GLASS(ext, cfg, progress=False).fit(TRAIN[:8])


# -- UniAD ---------------------------------------------------------------------------------
def test_neighbor_mask_matches_loops():
    h, w, (kh, kw) = 5, 6, (3, 5)
    expected = torch.zeros(h * w, h * w, dtype=torch.bool)
    for i1 in range(h):
        for j1 in range(w):
            for i2 in range(max(i1 - kh // 2, 0), min(i1 + kh // 2 + 1, h)):
                for j2 in range(max(j1 - kw // 2, 0), min(j1 + kw // 2 + 1, w)):
                    expected[i1 * w + j1, i2 * w + j2] = True
    assert torch.equal(neighbor_mask((h, w), (kh, kw)), expected)
    assert (scaled_neighbor_size((14, 14)), scaled_neighbor_size((16, 16)), scaled_neighbor_size((8, 4))) == ((7, 7), (9, 9), (5, 3))
    with pytest.raises(ValueError, match="neighbor_size"):
        neighbor_mask((3, 3), (5, 5))


def test_masked_attention_ignores_the_neighbourhood():
    """An encoder token's output changes with a far token, not with a masked neighbour (other than itself)."""
    torch.manual_seed(0)
    layer = EncoderLayer(UniADConfig(hidden_dim=8, num_heads=2, dim_feedforward=16, dropout=0.0)).eval()
    mask, pos = neighbor_mask((5, 5), (3, 3)), torch.zeros(25, 8)
    x = torch.randn(1, 25, 8)
    base = layer(x, pos, mask)[0, 12]  # centre token (2, 2)
    near, far = x.clone(), x.clone()
    near[0, 13] += 5.0  # (2, 3): inside the 3x3 window
    far[0, 0] += 5.0  # (0, 0): outside
    torch.testing.assert_close(layer(near, pos, mask)[0, 12], base)
    assert not torch.allclose(layer(far, pos, mask)[0, 12], base)


def test_uniad_map_is_error_on_concatenated_original_features(fitted, ext):
    det, feats = fitted[UniAD], ext(TEST[:3])
    assert det.grid == (4, 4)  # the coarsest layer
    x = torch.cat([F.interpolate(feats[0], size=(4, 4), mode="bilinear", align_corners=True), feats[1]], dim=1)
    torch.testing.assert_close(align_features(feats, (4, 4)), x)
    with torch.no_grad():
        rec = det.model(x)
    assert rec.shape == (3, 24, 4, 4)
    torch.testing.assert_close(det._score_grids(feats)[0], ((rec - x) ** 2).sum(dim=1).sqrt())
    maps, scores = det.predict(TEST[:3])
    torch.testing.assert_close(scores, F.avg_pool2d(maps[:, None], 2, stride=1).flatten(1).amax(dim=1))  # 16 px at 224 -> 2 at 32


def test_uniad_unified_fit_on_a_mix_of_categories(ext):
    cfg = UniADConfig(epochs=1, hidden_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=16)
    mix = {"textures": TRAIN[:6], "brighter": TRAIN[6:12] * 1.5}
    det = UniAD(ext, cfg, progress=False).fit(mix)
    assert det.predict(TEST[:2])[0].shape == (2, 32, 32)
    with pytest.raises(ValueError, match="one instance per category"):
        UniAD(ext, UniADConfig(epochs=1, unified=False), progress=False).fit(mix)
