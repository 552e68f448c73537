"""CFLOW-AD (Gudovskiy et al., WACV 2022) on any feature extractor.

Per layer, a conditional normalising flow maps a patch feature ``x [C]`` with the 2-D
sinusoidal encoding of its position ``c [128]`` to ``z ~ N(0, I)``; its log-likelihood
``log p(x | c)`` is the normality score. The flow is 8 coupling blocks in the style of
FrEIA's ``AllInOneBlock`` as the release configures it (affine coupling with the soft clamp
``s = 1.9 * tanh(0.1 * a)``, a global softplus scale, then a fixed random rotation or
permutation), written plainly in torch: FrEIA is not a dependency.

Training follows the release: features of a batch of images are split into *fibers*
(single positions), shuffled, and fed in chunks of N=256 per optimisation step; Adam
lr 2e-4 with a 2-epoch warm-up and cosine decay; 25 meta-epochs x 8 sub-epochs; loss
``-logsigmoid(log p / C)``.

Anomaly map (published: per-layer likelihoods normalised by their max, exponentiated,
upsampled, summed, inverted). The release normalises by the max over the *test set*, so
one image's map depends on the others. Here each layer's constant ``M_l`` is the max
per-dimension log-likelihood over the *training* positions, fixed at fit: per-layer grid
``1 - exp(log p_l / C_l - M_l)``; the base class upsamples and averages (== the published
``L - sum_l p_l`` up to the factor 1/L). Image score = max of the map; no Gaussian
smoothing by default, as in the release (``sigma=`` to change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.detector_module_adpretrain import register_detector_module
from .layers import SelectsLayerPositions
from .network_module import NetworkModule
from .trained import TrainedConfig, TrainedDetector

LOG_2PI_HALF = 0.5 * math.log(2 * math.pi)
COUPLING_SCALE = 0.1  # AllInOneBlock scales the subnet output by 0.1 before clamping
GLOBAL_SCALE_INIT = 1.0  # softplus global affine initialised to a scale of exactly 1
INFERENCE_CHUNK = 16384  # positions per flow call at predict (memory bound only)


@dataclass
class CFLOWConfig(TrainedConfig):
    """CFLOW hyperparameters; defaults are the release's (``main.py``/``config.py``)."""

    epoch_field: ClassVar[str] = "meta_epochs"
    quick_overrides: ClassVar[dict] = {"meta_epochs": 2, "sub_epochs": 1, "lr_warm_epochs": 0}

    coupling_blocks: int = 8
    """Coupling blocks per flow."""
    condition_dim: int = 128
    """Size of the 2-D sinusoidal positional condition (a multiple of 4)."""
    clamp_alpha: float = 1.9
    """Soft clamp of the log-scale: ``s = alpha * tanh(0.1 * a)``."""
    subnet_width_factor: int = 2
    """Hidden width of the coupling subnet = factor x its input width (Linear-ReLU-Linear)."""
    permute_soft: bool = True
    """Fixed random rotation between blocks (release, FrEIA ``permute_soft``); False: a hard permutation."""
    lr: float = 2e-4
    """Adam learning rate (all flows share one optimiser)."""
    meta_epochs: int = 25
    """Meta-epochs: the lr schedule steps per meta-epoch; ``epochs=`` sets this."""
    sub_epochs: int = 8
    """Passes over the training images within each meta-epoch."""
    batch_size: int = 32
    """Images whose fibers are shuffled together before being cut into chunks of N."""
    fiber_batch: int = 256
    """N: positions per optimisation step."""
    lr_cosine: bool = True
    """Cosine decay per meta-epoch from lr to lr * lr_decay_rate**3."""
    lr_decay_rate: float = 0.1
    """Sets the cosine floor lr * rate**3 (release)."""
    lr_warm_epochs: int = 2
    """Linear warm-up from lr/10 over the first meta-epochs (0 disables)."""
    loss: str = "logsigmoid"
    """``"logsigmoid"`` (release: -logsigmoid(log p / C)) or ``"nll"`` (plain -log p / C)."""

    def validate(self) -> None:
        super().validate()
        if self.coupling_blocks < 1:
            raise ValueError(f"coupling_blocks must be >= 1, got {self.coupling_blocks}")
        if self.condition_dim < 4 or self.condition_dim % 4:
            raise ValueError(f"condition_dim must be a positive multiple of 4 (sin/cos for x and y), got {self.condition_dim}")
        if self.clamp_alpha <= 0:
            raise ValueError(f"clamp_alpha must be > 0, got {self.clamp_alpha}")
        if self.fiber_batch < 1 or self.sub_epochs < 1 or self.subnet_width_factor < 1:
            raise ValueError("fiber_batch, sub_epochs and subnet_width_factor must be >= 1")
        if self.loss not in ("logsigmoid", "nll"):
            raise ValueError(f"loss must be 'logsigmoid' or 'nll', got {self.loss!r}")


def positional_encoding_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """CFLOW's condition ``[dim, h, w]``: first half sin/cos of x, second half of y.

    Channel ``2i`` of a half is ``sin(pos * 10000^(-2i/(dim/2)))``, ``2i+1`` the cosine.
    """
    if dim % 4:
        raise ValueError(f"positional encoding needs a dimension divisible by 4, got {dim}")
    half = dim // 2
    freq = torch.exp(torch.arange(0.0, half, 2) * -(math.log(1e4) / half))  # [half/2]
    xs = torch.arange(width, dtype=torch.float32)[:, None] * freq  # [w, half/2]
    ys = torch.arange(height, dtype=torch.float32)[:, None] * freq  # [h, half/2]
    enc = torch.zeros(dim, height, width)
    enc[0:half:2] = torch.sin(xs).T[:, None, :].expand(-1, height, -1)
    enc[1:half:2] = torch.cos(xs).T[:, None, :].expand(-1, height, -1)
    enc[half::2] = torch.sin(ys).T[:, :, None].expand(-1, -1, width)
    enc[half + 1 :: 2] = torch.cos(ys).T[:, :, None].expand(-1, -1, width)
    return enc


def random_rotation(dim: int, soft: bool) -> torch.Tensor:
    """A fixed random orthogonal matrix (soft) or permutation matrix ``[dim, dim]``; |det| = 1."""
    if soft:
        q, r = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64))
        return (q * torch.sign(torch.diagonal(r))).float()  # Haar-distributed
    return torch.eye(dim)[torch.randperm(dim)]


class CouplingBlock(nn.Module):
    """One conditional affine coupling block (AllInOneBlock semantics, forward direction).

    ``x = [x1, x2]`` (x1 gets the larger half); ``a = subnet([x1, c]) * 0.1``;
    ``x2 <- x2 * exp(alpha * tanh(a_s)) + a_t``; then a learned global scale
    ``0.2 * softplus(0.5 * g)`` (init 1) and offset; then the fixed rotation ``W``.
    """

    def __init__(self, dim: int, cond_dim: int, clamp: float, width_factor: int, soft_permute: bool) -> None:
        super().__init__()
        self.dim, self.clamp = dim, clamp
        self.split = dim - dim // 2
        width = self.split + cond_dim
        self.subnet = nn.Sequential(nn.Linear(width, width_factor * width), nn.ReLU(), nn.Linear(width_factor * width, 2 * (dim // 2)))
        # Inverse of 0.2 * softplus(0.5 * g) at the initial scale (FrEIA's SOFTPLUS global affine).
        g0 = 2.0 * math.log(math.exp(0.5 * 10.0 * GLOBAL_SCALE_INIT) - 1.0)
        self.global_scale = nn.Parameter(torch.full((dim,), g0))
        self.global_offset = nn.Parameter(torch.zeros(dim))
        self.register_buffer("rotation", random_rotation(dim, soft_permute))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [N, D], cond: [N, P] -> (y [N, D], log|det J| [N])
        x1, x2 = x[:, : self.split], x[:, self.split :]
        a = self.subnet(torch.cat([x1, cond], dim=1)).to(x.dtype) * COUPLING_SCALE  # fp32 out of autocast
        log_scale = self.clamp * torch.tanh(a[:, : x2.shape[1]])
        y = torch.cat([x1, x2 * torch.exp(log_scale) + a[:, x2.shape[1] :]], dim=1)
        scale = 0.2 * F.softplus(0.5 * self.global_scale)
        y = F.linear(y * scale + self.global_offset, self.rotation)
        return y, log_scale.sum(dim=1) + torch.log(scale).sum()


class ConditionalFlow(nn.Module):
    """A stack of coupling blocks; ``log_prob_per_dim`` is what CFLOW scores with."""

    def __init__(self, dim: int, config: CFLOWConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            CouplingBlock(dim, config.condition_dim, config.clamp_alpha, config.subnet_width_factor, config.permute_soft)
            for _ in range(config.coupling_blocks)
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x, ld = block(x, cond)
            log_det = log_det + ld
        return x, log_det

    def log_prob_per_dim(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``log p(x | c) / C`` under a standard normal base: ``[N]`` float32."""
        z, log_det = self(x, cond)
        c = x.shape[1]
        return (-c * LOG_2PI_HALF - 0.5 * z.pow(2).sum(dim=1) + log_det) / c


class CFLOWModel(nn.Module):
    """One flow per layer, the positional conditions, and the fit-time normalisers ``M_l``."""

    def __init__(self, layer_shapes: Sequence[tuple[int, int, int]], config: CFLOWConfig) -> None:
        super().__init__()
        self.flows = nn.ModuleList(ConditionalFlow(c, config) for c, _, _ in layer_shapes)
        for l, (_, h, w) in enumerate(layer_shapes):
            enc = positional_encoding_2d(config.condition_dim, h, w)
            self.register_buffer(f"cond_{l}", enc.flatten(1).T.contiguous())  # [h*w, P]; persistent: a loaded folder builds modules on the meta device, constants come from the file
        self.register_buffer("log_p_max", torch.zeros(len(layer_shapes)))

    def condition(self, layer: int) -> torch.Tensor:
        return getattr(self, f"cond_{layer}")

    def layer_log_prob(self, layer: int, feats: torch.Tensor) -> torch.Tensor:
        """``feats [B, C, h, w]`` -> per-dim log-likelihood grid ``[B, h, w]`` (chunked)."""
        b, c, h, w = feats.shape
        x = feats.flatten(2).transpose(1, 2).reshape(-1, c)  # [B*h*w, C], row-major positions
        cond = self.condition(layer).repeat(b, 1)
        out = [self.flows[layer].log_prob_per_dim(x[i : i + INFERENCE_CHUNK], cond[i : i + INFERENCE_CHUNK])
               for i in range(0, x.shape[0], INFERENCE_CHUNK)]
        return torch.cat(out).reshape(b, h, w)


@register_detector_module
class CFLOWModule(NetworkModule):
    """CFLOW scoring: per layer ``1 - exp(log p / C - M_l)`` ``[B, h_l, w_l]`` (0 at the most normal
    training position); image score = max of the map. ``net`` is a :class:`CFLOWModel`."""

    method = "cflow"
    config_class = CFLOWConfig

    def build_net(self) -> nn.Module:
        for l, (c, _, _) in enumerate(self.layer_shapes):
            if c < 2:
                raise ValueError(f"layer {l} has {c} channel(s): a coupling flow needs at least 2")
        return CFLOWModel(self.layer_shapes, self.config)

    def score_grids(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], None]:
        grids = []
        for l, feats in enumerate(self.check_layout(features)):
            with self.autocast():
                lp = self.net.layer_log_prob(l, feats)
            grids.append((1.0 - torch.exp(lp.double() - self.net.log_p_max[l].double())).float())
        return grids, None


class CFLOW(SelectsLayerPositions, TrainedDetector):
    """CFLOW-AD: ``CFLOW(extractor, CFLOWConfig(...), quick=False, epochs=None)``; ``epochs`` sets meta-epochs."""

    name = "cflow"
    config_class = CFLOWConfig
    module_class = CFLOWModule
    default_last_positions = 3  # the release's CFLOW: the last 3 tapped layers (``layer_positions=`` overrides)
    default_sigma = 0.0  # the release does not smooth CFLOW's maps
    config: CFLOWConfig

    def _make_optimizers(self, model: nn.Module) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(model.parameters(), lr=self.config.lr)]

    def _loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(log_prob) if self.config.loss == "logsigmoid" else -log_prob

    def _epoch_lr(self, epoch: float) -> float:
        cfg = self.config
        if not cfg.lr_cosine:
            return cfg.lr
        eta_min = cfg.lr * cfg.lr_decay_rate**3
        return eta_min + (cfg.lr - eta_min) * (1 + math.cos(math.pi * epoch / cfg.meta_epochs)) / 2

    def _fibers(self, layer: int, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shuffled fibers of one layer: features ``[E, C]`` and conditions ``[E, P]``."""
        b, c = feats.shape[:2]
        x = feats.flatten(2).transpose(1, 2).reshape(-1, c)
        cond = self.model.condition(layer).repeat(b, 1)
        perm = torch.randperm(x.shape[0], device=x.device)
        return x[perm], cond[perm]

    def _train_batches(self, train: list[torch.Tensor], epoch: int) -> Iterator[list[torch.Tensor]]:
        """``sub_epochs`` shuffled passes over the training images per (meta-)epoch."""
        for _ in range(self.config.sub_epochs):
            yield from self._minibatches(train, self.config.batch_size)

    def _learning_rate(self, epoch: int, index: int, train: list[torch.Tensor]) -> float:
        """Linear warm-up from lr/10 across the first meta-epochs (per image batch), then cosine per meta-epoch."""
        cfg = self.config
        if epoch >= cfg.lr_warm_epochs:
            return self._epoch_lr(epoch)
        iters = max(1, train[0].shape[0] // cfg.batch_size) * cfg.sub_epochs  # image batches per meta-epoch
        p = (index + epoch * iters) / (cfg.lr_warm_epochs * iters)
        return cfg.lr / 10 + p * (self._epoch_lr(cfg.lr_warm_epochs) - cfg.lr / 10)

    def _batch_losses(self, batch: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Per layer, the batch's shuffled fibers in chunks of ``fiber_batch``: one step each."""
        cfg = self.config
        for l, feats in enumerate(batch):
            x, cond = self._fibers(l, feats)
            n = min(cfg.fiber_batch, x.shape[0])
            for f in range(x.shape[0] // n):  # the remainder waits for the next shuffle, as released
                with self.accelerator.autocast():
                    log_prob = self.model.flows[l].log_prob_per_dim(x[f * n : (f + 1) * n], cond[f * n : (f + 1) * n])
                yield self._loss(log_prob.float()).mean()

    def _validation_sums(self, batch: list[torch.Tensor]) -> Iterator[tuple[float, int]]:
        for l, feats in enumerate(batch):
            with self.accelerator.autocast():
                lp = self.model.layer_log_prob(l, feats)
            yield self._loss(lp.float()).sum().item(), lp.numel()

    def _after_training(self, train: list[torch.Tensor]) -> None:
        """Fix ``M_l`` = max per-dim log-likelihood over the training positions of layer l."""
        maxima = torch.full((len(train),), -math.inf, device=self.device)
        for batch in self._eval_batches(train):
            for l, feats in enumerate(batch):
                with self.accelerator.autocast():
                    lp = self.model.layer_log_prob(l, feats)
                maxima[l] = torch.maximum(maxima[l], lp.float().max())
        self.model.log_p_max.copy_(maxima)
