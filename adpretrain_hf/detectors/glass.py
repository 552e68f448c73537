"""GLASS (Chen et al., ECCV 2024), the GLASS-h variant the ADPretrain paper reports.

Features: each layer is averaged over a 3x3 neighbourhood (the PatchCore-style patch
aggregation of the release), resized to the first layer's grid, pooled to 1536 channels
and concatenated per position, then passed through an *adaptor* (a linear layer for
backbone features; the ADPretrain release uses the identity for its pretrained features).
A discriminator MLP (Linear-BN-LeakyReLU(0.2)-Linear-Sigmoid, hidden 1024) scores each
position: 0 normal, 1 anomalous.

Training (per batch of 8 normal images): *global anomaly synthesis* adds Gaussian noise
(std 0.015 backbone / 0.005 pretrained) to the normal features, then 20 gradient-ascent
steps of size 0.001 on the discriminator's anomaly loss make them harder; every 5 steps
they are projected into a ring: GLASS-h keeps their distance to the per-position centre
``c`` within ``[r, 2r]`` with ``r`` the 0.75-quantile of the normal features' distances to
``c``; GLASS-m keeps their distance to the original feature within ``[0.5, 1]``. Loss: BCE
of normal (0) vs synthetic (1). The image-level branch (textures pasted under Perlin
masks, focal loss with hard mining) runs only with ``image_synthesis=True`` and a
``synthesizer``: no texture set ships offline, so it is off by default.

Map: discriminator output per position, upsampled, Gaussian sigma 4 (as the release);
image score: max of the raw per-position scores (release).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.detector_module_adpretrain import register_detector_module
from .base import ImageBatches
from .layers import SelectsLayerPositions
from .network_module import NetworkModule
from .trained import TrainedConfig, TrainedDetector

Synthesizer = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``images [B, 3, H, W] -> (anomalous images [B, 3, H, W], masks [B, H, W] in {0, 1})``."""

NOISE_STD = {"backbone": 0.015, "pretrained": 0.005}  # release values per feature kind
ADAPTOR = {"backbone": "linear", "pretrained": "identity"}
LEAKY_SLOPE = 0.2
GRAD_EPS = 1e-10


@dataclass
class GLASSConfig(TrainedConfig):
    """GLASS hyperparameters; defaults from the release's MVTec script (``run-mvtec.sh``)."""

    epoch_field: ClassVar[str] = "meta_epochs"
    quick_overrides: ClassVar[dict] = {"meta_epochs": 3}

    variant: str = "h"
    """``"h"``: hypersphere ring around the centre (GLASS-h, ADPretrain's choice); ``"m"``: manifold ring."""
    patchsize: int = 3
    """Local neighbourhood averaged per position (1 disables)."""
    embed_dim: int | None = 1536
    """Channels after pooling (per layer to this, then all layers to this); None: plain concatenation."""
    adaptor: str | None = None
    """``"linear"`` | ``"identity"``; None picks by ``extractor.feature_kind`` (backbone: linear, pretrained: identity)."""
    noise_std: float | None = None
    """Std of the Gaussian noise; None picks by ``extractor.feature_kind`` (0.015 backbone, 0.005 pretrained)."""
    dsc_layers: int = 2
    """Discriminator depth: dsc_layers - 1 hidden blocks, then the output layer."""
    dsc_hidden: int = 1024
    """Discriminator hidden width."""
    lr: float = 1e-4
    """Adaptor learning rate (Adam, weight decay 1e-5)."""
    adaptor_weight_decay: float = 1e-5
    """Adam weight decay of the linear adaptor."""
    dsc_lr: float = 2e-4
    """Discriminator learning rate (AdamW with its default weight decay 0.01): 2 x lr in the release."""
    dsc_weight_decay: float = 0.01
    """AdamW weight decay of the discriminator (torch default, as released)."""
    meta_epochs: int = 640
    """Training epochs; ``epochs=`` sets this."""
    batch_size: int = 8
    """Normal images per optimisation step."""
    images_per_epoch: int | None = 392
    """Release ``limit``: an epoch stops once more than this many images were seen; None: all."""
    ascent_steps: int = 20
    """Gradient-ascent steps that harden the noisy features (release ``step``)."""
    ascent_step_size: float = 0.001
    """Step along the L2-normalised gradient of the anomaly loss."""
    project_every: int = 5
    """Project into the ring every this many ascent steps."""
    radius_quantile: float = 0.75
    """GLASS-h ring radius r = this quantile of normal distances to the centre (release ``radius``)."""
    manifold_radius: float = 0.5
    """GLASS-m ring ``[r, 2r]`` around the original feature."""
    image_synthesis: bool = False
    """Image-level synthesis branch (needs a ``synthesizer``); off by default."""
    focal_gamma: float = 2.0
    """Focal-loss exponent of the image-level branch."""
    hard_mining_quantile: float = 0.5
    """Release ``p``: the focal loss sees only positions whose squared error is above this quantile."""

    def validate(self) -> None:
        super().validate()
        if self.variant not in ("h", "m"):
            raise ValueError(f"variant must be 'h' (hypersphere) or 'm' (manifold), got {self.variant!r}")
        if self.adaptor not in (None, "linear", "identity"):
            raise ValueError(f"adaptor must be 'linear', 'identity' or None (by extractor kind), got {self.adaptor!r}")
        if self.patchsize < 1 or self.patchsize % 2 == 0:
            raise ValueError(f"patchsize must be a positive odd number, got {self.patchsize}")
        if self.embed_dim is not None and self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1 or None, got {self.embed_dim}")
        if self.noise_std is not None and self.noise_std <= 0:
            raise ValueError(f"noise_std must be > 0 or None, got {self.noise_std}")
        if self.dsc_layers < 1 or self.dsc_hidden < 1 or self.project_every < 1 or self.ascent_steps < 0:
            raise ValueError("dsc_layers, dsc_hidden and project_every must be >= 1 and ascent_steps >= 0")
        if not 0.0 < self.radius_quantile <= 1.0 or not 0.0 <= self.hard_mining_quantile < 1.0:
            raise ValueError("radius_quantile must be in (0, 1] and hard_mining_quantile in [0, 1)")


def embed_features(features: Sequence[torch.Tensor], patchsize: int, embed_dim: int | None) -> torch.Tensor:
    """Per-layer maps ``[B, C_l, h_l, w_l]`` -> one float32 map ``[B, D, h_0, w_0]`` on the first layer's grid.

    3x3 local mean (zero padded, like the release's unfold), bilinear resize to the first
    (finest) grid, then either concatenation or the release's two-stage channel pooling
    (each layer adaptive-avg-pooled to ``embed_dim``, the stack pooled again to ``embed_dim``).
    """
    grid = tuple(features[0].shape[-2:])
    maps = []
    for f in features:
        f = f.float()
        if patchsize > 1:
            f = F.avg_pool2d(f, patchsize, stride=1, padding=patchsize // 2, count_include_pad=True)
        if tuple(f.shape[-2:]) != grid:
            f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
        maps.append(f)
    if embed_dim is None:
        return torch.cat(maps, dim=1)
    b, (h, w) = maps[0].shape[0], grid
    tokens = [m.flatten(2).transpose(1, 2).reshape(-1, 1, m.shape[1]) for m in maps]  # [B*h*w, 1, C_l]
    pooled = torch.cat([F.adaptive_avg_pool1d(t, embed_dim) for t in tokens], dim=2)  # [B*h*w, 1, L*D]
    out = F.adaptive_avg_pool1d(pooled, embed_dim).reshape(b, h * w, embed_dim)
    return out.transpose(1, 2).reshape(b, embed_dim, h, w)


def project_to_ring(points: torch.Tensor, anchor: torch.Tensor, r_min: torch.Tensor | float, r_max: torch.Tensor | float) -> torch.Tensor:
    """Rescale ``points - anchor`` (``[N, D]``) so its norm lies in ``[r_min, r_max]``; direction kept."""
    offset = points - anchor
    norm = offset.norm(dim=1, keepdim=True)
    return anchor + offset * (torch.clamp(norm, min=r_min, max=r_max) / (norm + GRAD_EPS))


def focal_loss(scores: torch.Tensor, target: torch.Tensor, gamma: float, smooth: float = 1e-5) -> torch.Tensor:
    """Binary focal loss on probabilities: ``-(1 - p_t)^gamma log p_t``, mean (release's FocalLoss)."""
    p_t = torch.where(target > 0.5, scores, 1 - scores).clamp(smooth, 1.0)
    return (-(1 - p_t).pow(gamma) * torch.log(p_t)).mean()


class Discriminator(nn.Module):
    """``dsc_layers - 1`` blocks of Linear-BatchNorm-LeakyReLU(0.2), then Linear(no bias)-Sigmoid."""

    def __init__(self, dim: int, layers: int, hidden: int) -> None:
        super().__init__()
        blocks, width = [], dim
        for _ in range(layers - 1):
            blocks += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(LEAKY_SLOPE)]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.tail = nn.Linear(width, 1, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, D] -> anomaly probability [N]
        return torch.sigmoid(self.tail(self.body(x)).float()).squeeze(1)


class GLASSModel(nn.Module):
    """Adaptor + discriminator, and the per-position centre ``c [h*w, D]`` (fit-time buffer)."""

    def __init__(self, dim: int, grid: tuple[int, int], config: GLASSConfig) -> None:
        super().__init__()
        self.adaptor = nn.Linear(dim, dim) if config.adaptor == "linear" else nn.Identity()
        if isinstance(self.adaptor, nn.Linear):
            nn.init.xavier_normal_(self.adaptor.weight)
        self.discriminator = Discriminator(dim, config.dsc_layers, config.dsc_hidden)
        self.register_buffer("center", torch.zeros(grid[0] * grid[1], dim))

    def tokens(self, embedded: torch.Tensor) -> torch.Tensor:
        """``[B, D, h, w]`` -> adapted tokens ``[B*h*w, D]`` (row-major positions)."""
        return self.adaptor(embedded.flatten(2).transpose(1, 2).reshape(-1, embedded.shape[1]))


@register_detector_module
class GLASSModule(NetworkModule):
    """GLASS scoring: the discriminator's output per position on the first layer's grid
    ``[B, h_0, w_0]``; image score (release) = max of those raw scores, before upsampling and
    smoothing. ``net`` is a :class:`GLASSModel`."""

    method = "glass"
    config_class = GLASSConfig

    def build_net(self) -> nn.Module:
        _, h, w = self.layer_shapes[0]  # the first layer's grid
        return GLASSModel(self.config.embed_dim or sum(c for c, _, _ in self.layer_shapes), (h, w), self.config)

    def embed(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Layers ``[B, C_l, h_l, w_l]`` -> the discriminator's input map ``[B, D, h_0, w_0]``."""
        return embed_features(features, self.config.patchsize, self.config.embed_dim)

    def score_grids(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        embedded = self.embed(self.check_layout(features))
        with self.autocast():
            scores = self.net.discriminator(self.net.tokens(embedded)).float()
        grid = scores.reshape(embedded.shape[0], *embedded.shape[-2:])
        return [grid], grid.flatten(1).amax(dim=1)


class GLASS(SelectsLayerPositions, TrainedDetector):
    """GLASS-h: ``GLASS(extractor, GLASSConfig(...), synthesizer=None, quick=False, epochs=None)``."""

    name = "glass"
    config_class = GLASSConfig
    module_class = GLASSModule
    default_last_positions = 2  # the release's GLASS: the last 2 tapped layers (``layer_positions=`` overrides)
    default_sigma = 4.0
    config: GLASSConfig

    def __init__(self, extractor, config: GLASSConfig | None = None, *, synthesizer: Synthesizer | None = None, **kwargs) -> None:
        """``kwargs``: those of :class:`TrainedDetector` (quick, epochs, batch_size, sigma, progress, accelerator).

        ``adaptor`` / ``noise_std`` left as None are resolved here from ``extractor.feature_kind``
        and stored in ``self.config`` (so a saved detector keeps them).
        """
        super().__init__(extractor, config, **kwargs)
        kind = getattr(extractor, "feature_kind", None)
        if (self.config.adaptor is None or self.config.noise_std is None) and kind not in NOISE_STD:
            raise ValueError(f"extractor.feature_kind is {kind!r}: set GLASSConfig.adaptor and noise_std explicitly, or use 'backbone'/'pretrained'")
        self.config = replace(
            self.config,
            adaptor=self.config.adaptor or ADAPTOR[kind],
            noise_std=self.config.noise_std if self.config.noise_std is not None else NOISE_STD[kind],
        )
        self.synthesizer = synthesizer
        self._synthetic: list[torch.Tensor] | None = None  # [embedded [N, D, h, w], mask [N, h, w]]

    # -- fit with the optional image-level branch -----------------------------------------
    def fit(self, normal_images: ImageBatches) -> "GLASS":
        if not self.config.image_synthesis:
            return super().fit(normal_images)
        if self.synthesizer is None:
            raise ValueError("image_synthesis=True needs synthesizer=<images -> (anomalous images, masks)>, e.g. DTD texture pasting")
        batches = list(self._batches(normal_images))  # iterated twice: normal and synthetic
        embedded, masks = [], []
        with torch.no_grad():
            for batch in batches:
                aug, mask = self.synthesizer(batch)
                if aug.shape != batch.shape or mask.shape[-2:] != batch.shape[-2:]:
                    raise ValueError("synthesizer must return images shaped like its input and masks [B, H, W]")
                emb = embed_features(self.extractor(aug), self.config.patchsize, self.config.embed_dim)
                embedded.append(emb.cpu())
                masks.append(F.adaptive_max_pool2d(mask.float().reshape(len(batch), 1, *mask.shape[-2:]), emb.shape[-2:])[:, 0].cpu())
        self._synthetic = [torch.cat(embedded), torch.cat(masks)]
        try:
            return super().fit(iter(batches))
        finally:
            self._synthetic = None

    # -- TrainedDetector hooks -----------------------------------------------------------
    def _make_optimizers(self, model: nn.Module) -> list[torch.optim.Optimizer]:
        cfg = self.config
        opts = [torch.optim.AdamW(model.discriminator.parameters(), lr=cfg.dsc_lr, weight_decay=cfg.dsc_weight_decay)]
        if cfg.adaptor == "linear":
            opts.append(torch.optim.Adam(model.adaptor.parameters(), lr=cfg.lr, weight_decay=cfg.adaptor_weight_decay))
        return opts

    def _before_training(self, train: list[torch.Tensor]) -> None:
        # Cache the embedded features (the pooling is fixed; only adaptor + discriminator learn).
        with torch.no_grad():
            cfg = self.config
            self._train_embedded = [torch.cat([embed_features(b, cfg.patchsize, cfg.embed_dim).cpu() for b in self._eval_batches(train)])]

    def _after_training(self, train: list[torch.Tensor]) -> None:
        self._update_center()  # the centre of the final adaptor (kept as a fit-time constant)
        del self._train_embedded

    def _update_center(self) -> None:
        """Release: the centre is the per-position mean of the adapted training features, every epoch."""
        total, n = None, 0
        with torch.no_grad():
            for (emb,) in self._eval_batches(self._train_embedded):
                with self.accelerator.autocast():
                    t = self.model.tokens(emb).float().reshape(emb.shape[0], -1, emb.shape[1])
                total = t.sum(0) if total is None else total + t.sum(0)
                n += emb.shape[0]
        self.model.center.copy_(total / n)

    def _train_batches(self, train: list[torch.Tensor], epoch: int) -> Iterator[tuple[torch.Tensor, list[torch.Tensor] | None]]:
        """Shuffled cached embeddings ``[b, D, h, w]`` (with synthetic images drawn independently
        of them); the centre follows the adaptor at each epoch's start; an epoch stops once more
        than ``images_per_epoch`` images were seen (release ``limit``)."""
        cfg = self.config
        self._update_center()
        seen = 0
        for (embedded,) in self._minibatches(self._train_embedded, cfg.batch_size):
            synthetic = None
            if self._synthetic is not None:
                idx = torch.randint(0, self._synthetic[0].shape[0], (embedded.shape[0],))
                synthetic = [t[idx].to(self.device) for t in self._synthetic]
            yield embedded, synthetic
            seen += embedded.shape[0]
            if cfg.images_per_epoch is not None and seen > cfg.images_per_epoch:
                break

    def _batch_losses(self, batch: tuple[torch.Tensor, list[torch.Tensor] | None]) -> Iterator[torch.Tensor]:
        embedded, synthetic = batch
        yield self._step_loss(embedded, synthetic)

    def _discriminate(self, x: torch.Tensor) -> torch.Tensor:
        with self.accelerator.autocast():
            return self.model.discriminator(x).float()

    def _step_loss(self, embedded: torch.Tensor, synthetic: list[torch.Tensor] | None, ascent: bool = True) -> torch.Tensor:
        """One GLASS objective on a batch: BCE(normal, 0) + BCE(gradient-ascended noise, 1) [+ focal]."""
        cfg, b = self.config, embedded.shape[0]
        with self.accelerator.autocast():
            true = self.model.tokens(embedded).float()  # [b*h*w, D], with the adaptor's graph
        center = self.model.center.repeat(b, 1)
        true_d = true.detach()
        fake = None
        if synthetic is not None:
            with self.accelerator.autocast():
                fake = self.model.tokens(synthetic[0]).float()
            fake_mask = synthetic[1].reshape(-1)
        with torch.no_grad():  # r: quantile of normal distances to the centre (+ clean synthetic positions)
            normal_points = true_d if fake is None else torch.cat([true_d, fake.detach()[fake_mask < 0.5]])
            normal_center = center if fake is None else torch.cat([center, center[fake_mask < 0.5]])
            r = torch.quantile((normal_points - normal_center).norm(dim=1), cfg.radius_quantile)
        gaus = true_d + torch.randn_like(true_d) * cfg.noise_std
        for step in range(cfg.ascent_steps if ascent else 0):
            gaus = gaus.detach().requires_grad_(True)
            scores = self._discriminate(torch.cat([true_d, gaus]))
            gaus_loss = F.binary_cross_entropy(scores[len(true_d) :], torch.ones_like(scores[len(true_d) :]))
            (grad,) = torch.autograd.grad(gaus_loss, [gaus])
            gaus = gaus.detach() + cfg.ascent_step_size * grad / (grad.norm(dim=1, keepdim=True) + GRAD_EPS)
            if (step + 1) % cfg.project_every == 0:
                if cfg.variant == "h":
                    gaus = project_to_ring(gaus, center, r, 2 * r)
                else:
                    gaus = project_to_ring(gaus, true_d, cfg.manifold_radius, 2 * cfg.manifold_radius)
        gaus = true + (gaus - true_d).detach()  # the adaptor gets gradients through both terms
        scores = self._discriminate(torch.cat([true, gaus]))
        n = len(true)
        loss = F.binary_cross_entropy(scores[:n], torch.zeros_like(scores[:n])) + F.binary_cross_entropy(
            scores[n:], torch.ones_like(scores[n:])
        )
        if fake is not None:
            loss = loss + self._focal_term(fake, fake_mask, center, r)
        return loss

    def _focal_term(self, fake: torch.Tensor, mask: torch.Tensor, center: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Image-level branch: GLASS-h pushes synthetic defects to ``[2r, 4r]`` from c; focal loss on hard positions."""
        cfg = self.config
        if cfg.variant == "h" and bool((mask > 0.5).any()):
            inside = mask > 0.5
            fake = fake.clone()
            fake[inside] = project_to_ring(fake[inside], center[inside], 2 * r, 4 * r)
        scores = self._discriminate(fake)
        if cfg.hard_mining_quantile > 0:
            err = (scores - mask) ** 2
            hard = err >= torch.quantile(err.detach(), cfg.hard_mining_quantile)
            scores, mask = scores[hard], mask[hard]
        return focal_loss(scores, mask, cfg.focal_gamma)

    def _validation_sums(self, batch: list[torch.Tensor]) -> Iterator[tuple[float, int]]:
        """BCE of normal vs noise-only synthetic features (no ascent: needs no gradients), image-weighted."""
        embedded = embed_features(batch, self.config.patchsize, self.config.embed_dim)
        yield float(self._step_loss(embedded, None, ascent=False)) * batch[0].shape[0], batch[0].shape[0]
