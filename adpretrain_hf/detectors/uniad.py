"""UniAD (You et al., NeurIPS 2022): a unified reconstruction model for many categories.

Features of all layers are resized (bilinear, align_corners=True, as UniAD's neck) to one
grid (default: the coarsest layer's, UniAD's stride 16) and concatenated: ``x [B, C, h, w]``.
Tokens are projected to ``hidden=256``, pass a 4-layer transformer encoder and a 4-layer
decoder whose every layer has its own learnable query embedding (the *layer-wise query
decoder*), and are projected back to ``C``. All attentions use the *neighbour mask*: a
token may not attend to the ``k x k`` neighbourhood around itself (k=7 on UniAD's 14x14
grid, scaled here to the grid: ``k = round(7 * h / 14)`` made odd), so it cannot copy its
input. Training adds *feature jitter* to the input tokens (``N(0, 1) * |x| / C * 20`` with
probability 1) and minimises the MSE between the reconstruction and the clean features.

Map: per-position L2 error between the reconstruction and the *original* concatenated
features, upsampled; no smoothing (release). Image score: max of the map after a 16x16
average pool at 224 px (release ``avgpool_size``), scaled to the image size.

Unified vs per category: UniAD's point is one model for all categories. With
``unified=True`` (default) ``fit`` accepts a mapping ``{category: images}`` and trains one
model on the shuffled mix; the per-category setting is simply one instance per category
(``unified=False`` refuses a mapping so the two are not confused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import ImageBatches, iter_image_batches
from ..modeling.detector_module_adpretrain import register_detector_module
from .layers import SelectsLayerPositions
from .network_module import NetworkModule
from .trained import TrainedConfig, TrainedDetector

NEIGHBOR_SIZE_AT_14 = 7  # the paper's neighbourhood on its 14x14 grid
REFERENCE_GRID = 14
SCORE_POOL_AT_224 = 16  # the release's image-score average pool, in pixels at 224x224
REFERENCE_IMAGE = 224


@dataclass
class UniADConfig(TrainedConfig):
    """UniAD hyperparameters; defaults from the release's MVTec-AD ``config.yaml``."""

    quick_overrides: ClassVar[dict] = {"epochs": 3}

    hidden_dim: int = 256
    """Transformer width after the input projection."""
    num_heads: int = 8
    """Attention heads."""
    num_encoder_layers: int = 4
    """Encoder layers."""
    num_decoder_layers: int = 4
    """Layer-wise query decoder layers."""
    dim_feedforward: int = 1024
    """FFN hidden width."""
    dropout: float = 0.1
    """Dropout in attention and FFN (training only)."""
    feature_size: tuple[int, int] | None = None
    """Grid all layers are resized to; None: the coarsest layer's grid."""
    neighbor_size: tuple[int, int] | None = None
    """Masked neighbourhood ``(kh, kw)``; None: 7 at 14x14, scaled to the grid (odd)."""
    neighbor_mask: tuple[bool, bool, bool] = (True, True, True)
    """Use the mask in (encoder, decoder query->memory, decoder query->previous layer)."""
    jitter_scale: float = 20.0
    """Feature-jitter scale: noise std = |token| / C * scale."""
    jitter_prob: float = 1.0
    """Probability a training batch is jittered."""
    lr: float = 1e-4
    """AdamW learning rate (betas 0.9, 0.999)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    epochs: int = 1000
    """Training epochs; ``epochs=`` sets this."""
    lr_step_fraction: float = 0.8
    """StepLR: multiply the lr by lr_gamma after this fraction of the epochs (800 of 1000)."""
    lr_gamma: float = 0.1
    """StepLR factor."""
    batch_size: int = 8
    """Images per optimisation step."""
    clip_grad_norm: float | None = 0.1
    """Gradient-norm clipping (None: off)."""
    score_pool: int = SCORE_POOL_AT_224
    """Image score = max of the map average-pooled over this many pixels at 224 (scaled); 1 = plain max."""
    unified: bool = True
    """One model for all categories (``fit`` takes ``{category: images}``); False: one category per instance."""

    def validate(self) -> None:
        super().validate()
        if self.hidden_dim < 2 or self.hidden_dim % 2 or self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim must be even (row/column position halves) and divisible by num_heads; got {self.hidden_dim}, {self.num_heads}"
            )
        if self.num_encoder_layers < 1 or self.num_decoder_layers < 1 or self.dim_feedforward < 1:
            raise ValueError("num_encoder_layers, num_decoder_layers and dim_feedforward must be >= 1")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.jitter_prob <= 1.0 or self.jitter_scale < 0:
            raise ValueError("dropout must be in [0, 1), jitter_prob in [0, 1] and jitter_scale >= 0")
        if self.neighbor_size is not None and any(k < 1 or k % 2 == 0 for k in self.neighbor_size):
            raise ValueError(f"neighbor_size must be two positive odd numbers, got {self.neighbor_size}")
        if self.score_pool < 1:
            raise ValueError(f"score_pool must be >= 1, got {self.score_pool}")


def scaled_neighbor_size(grid: tuple[int, int]) -> tuple[int, int]:
    """The paper's 7 at 14x14 scaled to ``grid``, rounded, made odd (14 -> 7, 16 -> 9, 8 -> 5)."""
    out = []
    for side in grid:
        k = max(1, round(NEIGHBOR_SIZE_AT_14 * side / REFERENCE_GRID))
        out.append(k if k % 2 else k + 1)
    return out[0], out[1]


def neighbor_mask(grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``[h*w, h*w]`` bool, True where query i may NOT attend key j (j in i's k x k window)."""
    h, w = grid
    rows = torch.arange(h, device="cpu").repeat_interleave(w)  # on the CPU even while a folder builds on meta
    cols = torch.arange(w, device="cpu").repeat(h)
    mask = ((rows[:, None] - rows[None, :]).abs() <= size[0] // 2) & ((cols[:, None] - cols[None, :]).abs() <= size[1] // 2)
    if bool(mask.all(dim=1).any()):
        raise ValueError(
            f"a {size[0]}x{size[1]} neighbour mask hides every token of the {h}x{w} grid from some query: "
            "pass a smaller UniADConfig.neighbor_size or a larger feature_size"
        )
    return mask


def align_features(features: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """Per-layer maps -> ``[B, sum C_l, h, w]``: bilinear (align_corners=True) resize and concatenate."""
    return torch.cat(
        [f if tuple(f.shape[-2:]) == grid else F.interpolate(f, size=grid, mode="bilinear", align_corners=True) for f in features],
        dim=1,
    )


class EncoderLayer(nn.Module):
    """Post-norm self-attention (position added to queries and keys) + FFN."""

    def __init__(self, cfg: UniADConfig) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(cfg.hidden_dim, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.dim_feedforward), nn.ReLU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.dim_feedforward, cfg.hidden_dim))
        self.norm1, self.norm2 = nn.LayerNorm(cfg.hidden_dim), nn.LayerNorm(cfg.hidden_dim)
        self.drop1, self.drop2 = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # x: [B, N, hidden], pos: [N, hidden]
        q = x + pos
        x = self.norm1(x + self.drop1(self.attn(q, q, x, attn_mask=mask, need_weights=False)[0]))
        return self.norm2(x + self.drop2(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Layer-wise query decoder layer: its own learned queries attend to the encoder output
    (memory), then to the previous decoder layer's output, then an FFN; post-norm."""

    def __init__(self, cfg: UniADConfig, num_tokens: int) -> None:
        super().__init__()
        self.query = nn.Embedding(num_tokens, cfg.hidden_dim)
        self.attn_memory = nn.MultiheadAttention(cfg.hidden_dim, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.attn_previous = nn.MultiheadAttention(cfg.hidden_dim, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.dim_feedforward), nn.ReLU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.dim_feedforward, cfg.hidden_dim))
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.hidden_dim) for _ in range(3))
        self.drops = nn.ModuleList(nn.Dropout(cfg.dropout) for _ in range(3))

    def forward(self, previous: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                mask_memory: torch.Tensor | None, mask_previous: torch.Tensor | None) -> torch.Tensor:
        q = self.query.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)  # [B, N, hidden]
        a = self.attn_memory(q + pos, memory + pos, memory, attn_mask=mask_memory, need_weights=False)[0]
        q = self.norms[0](q + self.drops[0](a))
        a = self.attn_previous(q + pos, previous + pos, previous, attn_mask=mask_previous, need_weights=False)[0]
        q = self.norms[1](q + self.drops[1](a))
        return self.norms[2](q + self.drops[2](self.ffn(q)))


class UniADModel(nn.Module):
    """``x [B, C, h, w]`` -> reconstruction ``[B, C, h, w]`` (jitter only in training)."""

    def __init__(self, in_dim: int, grid: tuple[int, int], cfg: UniADConfig) -> None:
        super().__init__()
        n = grid[0] * grid[1]
        self.grid, self.jitter_scale, self.jitter_prob = grid, cfg.jitter_scale, cfg.jitter_prob
        self.input_proj = nn.Linear(in_dim, cfg.hidden_dim)
        self.output_proj = nn.Linear(cfg.hidden_dim, in_dim)
        self.row_embed = nn.Embedding(grid[0], cfg.hidden_dim // 2)  # learned position, UniAD's default
        self.col_embed = nn.Embedding(grid[1], cfg.hidden_dim // 2)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg, n) for _ in range(cfg.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(cfg.hidden_dim)
        size = cfg.neighbor_size or scaled_neighbor_size(grid)
        self.register_buffer("mask", neighbor_mask(grid, size))  # persistent: a loaded folder builds modules on the meta device, constants come from the file
        self.use_mask = cfg.neighbor_mask
        for m in self.modules():  # release initialiser: xavier_uniform on Linear weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def position(self) -> torch.Tensor:
        h, w = self.grid
        col = self.col_embed.weight.unsqueeze(0).expand(h, -1, -1)  # [h, w, hidden/2]
        row = self.row_embed.weight.unsqueeze(1).expand(-1, w, -1)
        return torch.cat([col, row], dim=-1).reshape(h * w, -1)  # [N, hidden], row-major

    def jitter(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feature jitter: ``tokens + N(0, 1) * |token| / C * scale`` with probability ``jitter_prob``."""
        if torch.rand(()) > self.jitter_prob:
            return tokens
        norms = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
        return tokens + torch.randn_like(tokens) * norms * self.jitter_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, N, C]
        if self.training and self.jitter_scale > 0:
            tokens = self.jitter(tokens)
        hidden, pos = self.input_proj(tokens), self.position()
        m_enc, m_mem, m_prev = (self.mask if use else None for use in self.use_mask)
        for layer in self.encoder:
            hidden = layer(hidden, pos, m_enc)
        memory, out = hidden, hidden
        for layer in self.decoder:
            out = layer(out, memory, pos, m_mem, m_prev)
        rec = self.output_proj(self.decoder_norm(out))  # [B, N, C]
        return rec.transpose(1, 2).reshape(b, c, h, w)


def uniad_grid(config: UniADConfig, layer_shapes: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """The common token grid (config, or the coarsest fitted layer)."""
    if config.feature_size is not None:
        return tuple(config.feature_size)
    return min(((h, w) for _, h, w in layer_shapes), key=lambda g: g[0] * g[1])


@register_detector_module
class UniADModule(NetworkModule):
    """UniAD scoring: ``[B, h, w]`` L2 distance between reconstruction and input over all
    concatenated channels; image score = max of the map after a stride-1 average pool (16 px at
    224, scaled to the image). ``net`` is a :class:`UniADModel`."""

    method = "uniad"
    config_class = UniADConfig

    @property
    def grid(self) -> tuple[int, int]:
        return uniad_grid(self.config, self.layer_shapes)

    def build_net(self) -> nn.Module:
        return UniADModel(sum(c for c, _, _ in self.layer_shapes), self.grid, self.config)

    def score_grids(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], None]:
        x = align_features(self.check_layout(features), self.grid)
        with self.autocast():
            rec = self.net(x)
        return [(rec.float() - x).pow(2).sum(dim=1).sqrt()], None

    def image_score(self, maps: torch.Tensor, map_max: torch.Tensor, grids: list[torch.Tensor], own: None) -> torch.Tensor:
        k = max(1, round(self.config.score_pool * maps.shape[-2] / REFERENCE_IMAGE))
        k = min(k, maps.shape[-2], maps.shape[-1])
        return F.avg_pool2d(maps.unsqueeze(1), k, stride=1).flatten(1).amax(dim=1)


class UniAD(SelectsLayerPositions, TrainedDetector):
    """UniAD: ``UniAD(extractor, UniADConfig(...), quick=False, epochs=None)``; ``fit`` also takes ``{category: images}``."""

    name = "uniad"
    config_class = UniADConfig
    module_class = UniADModule
    default_last_positions = None  # published UniAD: every tapped stage (``layer_positions=`` overrides)
    default_sigma = 0.0  # the release does not smooth UniAD's maps
    config: UniADConfig

    def fit(self, normal_images: ImageBatches | Mapping[str, ImageBatches]) -> "UniAD":
        """Fit on normal images, or (``unified=True``) on ``{category: images}`` as one shuffled mix."""
        if isinstance(normal_images, Mapping):
            if not self.config.unified:
                raise ValueError(
                    "unified=False trains one model per category: fit one instance per category, "
                    "or set UniADConfig(unified=True) to fit one model on the mix"
                )
            if len(normal_images) == 0:
                raise ValueError("no categories given: pass {category: normal images} with at least one entry")
            normal_images = [b for images in normal_images.values() for b in iter_image_batches(images, self.batch_size)]
        return super().fit(normal_images)

    @property
    def grid(self) -> tuple[int, int]:
        """The common token grid (config, or the coarsest fitted layer)."""
        return uniad_grid(self.config, self.layer_shapes)

    def _make_optimizers(self, model: nn.Module) -> list[torch.optim.Optimizer]:
        return [torch.optim.AdamW(model.parameters(), lr=self.config.lr, betas=(0.9, 0.999), weight_decay=self.config.weight_decay)]

    def _learning_rate(self, epoch: int, index: int, train: list[torch.Tensor]) -> float:
        """StepLR: ``lr``, times ``lr_gamma`` from ``lr_step_fraction`` of the epochs on."""
        cfg = self.config
        return cfg.lr * (cfg.lr_gamma if epoch >= round(cfg.lr_step_fraction * cfg.epochs) else 1.0)

    def _max_grad_norm(self) -> float | None:
        return self.config.clip_grad_norm

    def _batch_losses(self, batch: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """MSE between the reconstruction of the (jittered, in train mode) tokens and the clean features."""
        x = align_features(batch, self.grid)
        with self.accelerator.autocast():
            rec = self.model(x)
        yield F.mse_loss(rec.float(), x)

    def _validation_sums(self, batch: list[torch.Tensor]) -> Iterator[tuple[float, int]]:
        """Squared reconstruction error of clean held-out features (eval mode: no jitter, no dropout)."""
        x = align_features(batch, self.grid)
        with self.accelerator.autocast():
            rec = self.model(x)
        yield F.mse_loss(rec.float(), x, reduction="sum").item(), x.numel()
