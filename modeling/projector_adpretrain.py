"""The Feature Projector (paper section 3.3) and the Table 2(b) ablation variants.

The default block is the learnable key/value (LKV) attention block:

    R_h = RefProj(R)                      # N_r learnable references, D -> D
    a   = MHA(query=x, key=R_h, value=R_h)
    x1  = x - a                           # subtractive residual: remove learned normal patterns
    out = x1 + MLP_SE(x1)                 # MLP with a squeeze-and-excitation gate

Parameter names follow ``nn.MultiheadAttention`` (``in_proj_weight``, ``out_proj``) so the
authors' release converts by renaming keys only. The learned references' keys and values
are the same for every image, so they are projected once per forward and every token of
the batch attends to them in one call (the release repeated them per image).

Part of the remote-code bundle: imports only torch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

RELEASE_INIT = "release"  # config.projector_init value (configuration_adpretrain.PROJECTOR_INITS)


class SqueezeExcitation(nn.Module):
    """Channel gate from the mean over tokens: ``[B, N, C] -> [B, 1, C]`` in (0, 1)."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(channels, bottleneck)
        self.up = nn.Linear(bottleneck, channels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [B, N, C]
        squeezed = hidden.mean(dim=1, keepdim=True)
        return torch.sigmoid(self.up(F.relu(self.down(squeezed))))


class GatedMlp(nn.Module):
    """Linear D->rD, SE gate on the hidden, GELU, Linear rD->D (no norm, no dropout: the release's MLP)."""

    def __init__(self, dim: int, mlp_ratio: int, use_se_gate: bool, se_reduction: int) -> None:
        super().__init__()
        hidden = dim * mlp_ratio
        self.fc1 = nn.Linear(dim, hidden)
        self.se = SqueezeExcitation(hidden, max(1, hidden // se_reduction)) if use_se_gate else None
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, N, D]
        hidden = self.fc1(x)
        if self.se is not None:
            hidden = hidden * self.se(hidden)
        return self.fc2(F.gelu(hidden))


class MultiHeadAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter layout, over shared keys.

    ``shared_kv=True`` means one key/value set ``[M, D]`` serves every query of the batch:
    queries of all images are folded into one sequence (attention is independent per query,
    so this is exact) and K/V are projected once.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"feature width {dim} is not divisible by {num_heads} heads: set projector_num_heads to a divisor")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [S, L, D] -> [S, H, L, d]
        s, length, dim = x.shape
        return x.view(s, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
        """query ``[B, N, D]``; key_value ``[M, D]`` (shared by the batch) or ``[B, M, D]``."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        batch, tokens, dim = query.shape
        shared = key_value.dim() == 2
        if shared:
            q = F.linear(query.reshape(1, batch * tokens, dim), w_q, b_q)
            kv = key_value.unsqueeze(0)
        else:
            q = F.linear(query, w_q, b_q)
            kv = key_value
        k, v = F.linear(kv, w_k, b_k), F.linear(kv, w_v, b_v)
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        out = out.transpose(1, 2).reshape(q.shape)
        return self.out_proj(out).reshape(batch, tokens, dim)


class LearnableReferences(nn.Module):
    """N_r learnable reference vectors ~ N(0, 1), passed through a D->D projection per forward."""

    def __init__(self, num_references: int, dim: int) -> None:
        super().__init__()
        self.references = nn.Parameter(torch.randn(num_references, dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self) -> torch.Tensor:
        return self.proj(self.references)  # [N_r, D]


class ProjectorBlock(nn.Module):
    """Attention (subtractive for LKV, additive otherwise) followed by a residual gated MLP."""

    def __init__(self, dim: int, config, subtractive: bool, with_attention: bool = True) -> None:
        super().__init__()
        self.subtractive = subtractive
        self.attn = MultiHeadAttention(dim, config.projector_num_heads) if with_attention else None
        self.mlp = GatedMlp(dim, config.mlp_ratio, config.use_se_gate, config.se_reduction)

    def forward(self, x: torch.Tensor, key_value: Optional[torch.Tensor]) -> torch.Tensor:
        # x: [B, N, D]
        if self.attn is not None:
            attended = self.attn(x, key_value)
            x = x - attended if self.subtractive else x + attended
        return x + self.mlp(x)


class FeatureProjector(nn.Module):
    """One layer's projector: ``[B, N, D] -> [B, N, D]``.

    ``projector_type`` (Table 2(b)):
      * ``lkv``: learnable key/value attention, subtractive (the paper);
      * ``linear``: one Linear D->D;
      * ``mlp``: residual gated MLP blocks;
      * ``self_attn``: vanilla Transformer blocks (queries, keys, values = the tokens);
      * ``cross_attn``: keys/values = residual features of the normal references (``context``).
    """

    def __init__(self, dim: int, config) -> None:
        super().__init__()
        self.kind = config.projector_type
        self.linear = nn.Linear(dim, dim) if self.kind == "linear" else None
        self.learnable = LearnableReferences(config.num_learnable_references, dim) if self.kind == "lkv" else None
        if self.kind == "linear":
            self.blocks = nn.ModuleList()
        else:
            self.blocks = nn.ModuleList(
                ProjectorBlock(dim, config, subtractive=self.kind == "lkv", with_attention=self.kind != "mlp")
                for _ in range(config.num_projector_blocks)
            )
        if getattr(config, "projector_init", RELEASE_INIT) == RELEASE_INIT:
            for module in self.modules():
                release_init_(module)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x ``[B, N, D]``; context ``[M, D]`` or ``[B, M, D]`` (only for ``cross_attn``)."""
        if self.linear is not None:
            return self.linear(x)
        if self.kind == "lkv":
            key_value = self.learnable()  # one projection of the shared references per forward
        elif self.kind == "cross_attn":
            if context is None:
                raise ValueError("projector_type='cross_attn' needs the reference residuals as context")
            key_value = context
        else:
            key_value = None
        for block in self.blocks:
            kv = x if self.kind == "self_attn" else key_value
            x = block(x, kv)
        return x


def release_init_(module: nn.Module, init=nn.init) -> None:
    """The release's initialisation of one module, in place (models/projector.py of the release).

    ``LearnableReferences``: the reference projection (a Conv1d k=1 there, a Linear D->D here,
    fan_in = D either way) gets ``kaiming_normal_(mode="fan_in", nonlinearity="leaky_relu")``,
    i.e. N(0, 2 / D) with torch's default slope 0 (ProjectEmbedding); its bias keeps the default
    U(+-1/sqrt(D)). ``MultiHeadAttention``: in_proj_bias and out_proj.bias are zero
    (``nn.MultiheadAttention._reset_parameters``). Everything else keeps PyTorch's defaults, as in
    the release. ``init`` is ``torch.nn.init`` or transformers' loading-aware equivalent.
    With ``projector_init="torch"`` this is skipped: the reference projection and out_proj keep
    ``nn.Linear``'s uniform defaults.
    """
    if isinstance(module, LearnableReferences):
        init.kaiming_normal_(module.proj.weight, mode="fan_in", nonlinearity="leaky_relu")
    elif isinstance(module, MultiHeadAttention):
        init.zeros_(module.in_proj_bias)
        init.zeros_(module.out_proj.bias)


def lkv_parameter_count(dim: int, num_references: int = 2048, mlp_ratio: int = 4, se_reduction: int = 16) -> int:
    """Parameters of one default LKV projector, analytically: 15 D^2 + 2062 D (+ D/4).

    This is the release's block (references 2048 D + a D x D projection, attention 4 D^2,
    MLP 8 D^2, SE gate 2 D^2). The paper's Table 7 (21.3 / 37.8 / 59 M for B / L / H over 4
    layers) corresponds to about 9 D^2 per layer instead; we follow the release.
    """
    hidden = dim * mlp_ratio
    bottleneck = hidden // se_reduction
    refs = num_references * dim + dim * dim + dim
    attn = 3 * dim * dim + 3 * dim + dim * dim + dim
    mlp = dim * hidden + hidden + hidden * dim + dim
    se = hidden * bottleneck + bottleneck + bottleneck * hidden + hidden
    return refs + attn + mlp + se
