"""The training-free detectors' scoring modules: FeatureNorm, PatchCore, PaDiM.

Each is a :class:`~.detector_module_adpretrain.DetectorModule` (fitted state in buffers, one
``forward(features, image_size) -> (anomaly_map, score)``). The fitting code
(``adpretrain_hf.detectors``) computes the fitted tensors and hands them to ``set_fitted``;
a detector folder rebuilds the same module from its config and loads the buffers.

Variants: the maths of a method sits in a small table of functions (``*Functions``), chosen by
the constructor option ``variant``. ``"package"`` (the default) is this package's own;
``"release"`` is the released ADPretrain code's maths (``release_scoring_adpretrain``, proven on
that code's outputs in tests/release_parity/): another row of ``VARIANTS`` with its own
functions and nothing else. The map step is part of the row (``anomaly_map``), so the one
scoring path, ``forward``, computes either variant.

Part of the remote-code bundle: imports only torch and its siblings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional, Sequence

import torch

from .detector_module_adpretrain import DetectorModule, closest_name_hint, register_detector_module
from .anomaly_map_adpretrain import anomaly_map_from_grids
from .matching_adpretrain import BACKENDS, DEFAULT_MAX_BLOCK_ELEMENTS, TRACEABLE_BACKEND, nearest_neighbors
from .release_scoring_adpretrain import (
    release_featurenorm_token_scores,
    release_level_mean_anomaly_map,
    release_mahalanobis,
    release_patchcore_anomaly_map,
    release_nn_squared_distances,
    release_patchcore_embed_levels,
)
from .scoring_adpretrain import (
    PATCHCORE_DIM,
    PATCHCORE_REWEIGHT_NEIGHBORS,
    aggregate_patch_features,
    mahalanobis_distances,
    padim_groups,
    patchcore_image_scores,
)

__all__ = [
    "DEFAULT_VARIANT", "PADIM_MODES", "PATCHCORE_IMAGE_SCORES", "RELEASE_VARIANT", "FeatureNormFunctions",
    "FeatureNormModule", "PaDiMFunctions", "PaDiMModule", "PatchCoreFunctions", "PatchCoreModule", "VariantModule",
]

PATCHCORE_IMAGE_SCORES = ("reweighted", "max", "map_max")  # Eq. 7 | largest raw NN distance | max of the map
PADIM_MODES = ("per_layer", "concatenated")  # one Gaussian per layer (release) | over all layers (paper)
DEFAULT_VARIANT = "package"  # the package's own maths
RELEASE_VARIANT = "release"  # the released code's maths (tests/release_parity/)


def _positive_int(value: object, name: str, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int ({why}), got {value!r}")
    return value


def _l2_norm_grid(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.float().norm(dim=1)


class VariantModule(DetectorModule):
    """A method whose maths is a row of ``VARIANTS`` (``self.functions``), chosen by ``variant``.

    Saved settings: ``sigma``, the method's own (``method_settings``), then ``variant`` when not the
    default; the map step is the row's ``anomaly_map``.
    """

    VARIANTS: ClassVar[dict] = {}

    def __init__(self, *, variant: str = DEFAULT_VARIANT, **kwargs) -> None:
        super().__init__(**kwargs)
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown {self.method} variant {variant!r}{closest_name_hint(variant, self.VARIANTS)}: "
                             f"choose one of {sorted(self.VARIANTS)}")
        self.functions, self.variant = self.VARIANTS[variant], variant

    def method_settings(self) -> dict:
        return {}

    def settings(self) -> dict:
        out = {**super().settings(), **self.method_settings()}
        return out if self.variant == DEFAULT_VARIANT else {**out, "variant": self.variant}

    def anomaly_map(self, grids: list[torch.Tensor], image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.functions.anomaly_map(grids, image_size, self.sigma)


@dataclass(frozen=True)
class FeatureNormFunctions:
    """FeatureNorm's swappable maths: ``token_scores([B, C, h, w]) -> [B, h, w]`` and
    ``anomaly_map(grids, size, sigma) -> (map [B, H, W], map max [B])``."""

    token_scores: Callable = _l2_norm_grid
    anomaly_map: Callable = anomaly_map_from_grids


@register_detector_module
class FeatureNormModule(VariantModule):
    """FeatureNorm: a score of each patch feature's L2 norm, per layer ``[B, h_l, w_l]`` (nothing fitted).

    Variants: ``"package"`` scores ``||e||`` (maps ``align_corners=False``); ``"release"`` scores
    ``sqrt(||e|| + 1) - 1`` (maps ``align_corners=True``, smoothed in float64).
    """

    method = "featurenorm"
    VARIANTS: ClassVar[dict[str, FeatureNormFunctions]] = {
        DEFAULT_VARIANT: FeatureNormFunctions(),
        RELEASE_VARIANT: FeatureNormFunctions(release_featurenorm_token_scores, release_level_mean_anomaly_map),
    }

    def score_grids(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], None]:
        return [self.functions.token_scores(fmap) for fmap in features], None


def _package_search(queries: torch.Tensor, bank: torch.Tensor, backend: str, max_block_elements: int):
    return nearest_neighbors(queries, bank, metric="l2", backend=backend, max_block_elements=max_block_elements)


def _release_search(queries: torch.Tensor, bank: torch.Tensor, backend: str, max_block_elements: int):
    return release_nn_squared_distances(queries, bank)  # exact (float64) squared L2, whatever the backend


def _plain_l2(squared: torch.Tensor) -> torch.Tensor:
    return squared.clamp_min(0.0).sqrt()  # the package scores plain L2 distances


def _squared_l2(squared: torch.Tensor) -> torch.Tensor:
    return squared.clamp_min(0.0)  # the release scores squared L2 distances (faiss IndexFlatL2)


@dataclass(frozen=True)
class PatchCoreFunctions:
    """PatchCore's swappable maths: ``embed(maps, dim) -> [B, h, w, D]``, ``search(queries [N, D], bank,
    backend, max_block_elements) -> (squared L2 [N], nearest row [N])``, ``patch_scores(squared L2 [N]) -> [N]``, ``image_scores(kind, dist [B, P], idx, emb [B, P, D], bank, b,
    block) -> [B]``, ``anomaly_map(grids, size, sigma) -> (map, map max)`` and the variant's
    ``image_score`` rule when none is given."""

    embed: Callable = aggregate_patch_features
    search: Callable = _package_search
    patch_scores: Callable = _plain_l2
    image_scores: Callable = patchcore_image_scores
    anomaly_map: Callable = anomaly_map_from_grids
    image_score: str = "reweighted"


@register_detector_module
class PatchCoreModule(VariantModule):
    """PatchCore scoring: L2 distance of each locally aware patch embedding to its nearest
    memory-bank row (one grid on the largest layer grid) and the ``image_score`` rule.

    Buffers: ``memory_bank [M, D]``. Options: ``embedding_dim`` (most channels kept),
    ``image_score`` (``"reweighted" | "max" | "map_max"``; ``None``: the variant's), ``num_neighbors``
    (Eq. 7's b), ``backend`` (nearest-neighbour search; a folder scores with ``"traceable"``, plain
    torch that exports to ONNX), ``max_block_elements``, ``variant``: ``"package"`` (channel-weighted
    ``min(1024, C)`` embedding, plain L2, Eq. 7) or ``"release"`` (every level pooled to 1024 then
    1024, exact SQUARED L2 in float64 whatever ``backend``, image score = max of the patch grid, map
    smoothed in float64; not traceable to ONNX).
    """

    method = "patchcore"
    VARIANTS: ClassVar[dict[str, PatchCoreFunctions]] = {
        DEFAULT_VARIANT: PatchCoreFunctions(),
        RELEASE_VARIANT: PatchCoreFunctions(embed=release_patchcore_embed_levels, search=_release_search,
                                            patch_scores=_squared_l2,
                                            anomaly_map=release_patchcore_anomaly_map, image_score="max"),
    }

    def __init__(
        self, *, embedding_dim: int = PATCHCORE_DIM, image_score: Optional[str] = None,
        num_neighbors: int = PATCHCORE_REWEIGHT_NEIGHBORS, backend: str = TRACEABLE_BACKEND,
        max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS, **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.embedding_dim = _positive_int(embedding_dim, "embedding_dim", "the most channels kept")
        image_score = self.functions.image_score if image_score is None else image_score
        if image_score not in PATCHCORE_IMAGE_SCORES:
            raise ValueError(f"unknown image_score {image_score!r}{closest_name_hint(image_score, PATCHCORE_IMAGE_SCORES)}: "
                             f"choose one of {PATCHCORE_IMAGE_SCORES}")
        self.image_score_rule = image_score
        self.num_neighbors = _positive_int(num_neighbors, "num_neighbors", "b of Eq. 7")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}{closest_name_hint(backend, BACKENDS)}: choose one of {BACKENDS}")
        self.backend = backend
        self.max_block_elements = _positive_int(max_block_elements, "max_block_elements", "a bound on a distance block")

    def method_settings(self) -> dict:
        """Saved options (not ``backend`` / ``max_block_elements``: how to search, not what)."""
        return {"embedding_dim": self.embedding_dim, "image_score": self.image_score_rule, "num_neighbors": self.num_neighbors}

    def required_buffers(self) -> list[str]:
        return ["memory_bank"]

    def embed(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Used layers ``[B, C_l, h_l, w_l]`` -> patch embeddings ``[B, h, w, D]``."""
        return self.functions.embed(features, self.embedding_dim)

    def score_grids(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        bank = self.memory_bank.float()  # [M, D]; float32 even when the model was cast to bf16
        emb = self.embed(features)  # [B, h, w, D]
        h, w, d = emb.shape[1:]
        flat = emb.reshape(-1, d)
        squared, idx = self.functions.search(flat, bank, self.backend, self.max_block_elements)
        dist = self.functions.patch_scores(squared)  # [B*h*w]
        grids = [dist.reshape(-1, h, w)]
        if self.image_score_rule == "map_max":
            return grids, None
        own = self.functions.image_scores(
            self.image_score_rule, dist.reshape(-1, h * w), idx.reshape(-1, h * w), flat.reshape(-1, h * w, d), bank,
            self.num_neighbors, self.max_block_elements,
        )
        return grids, own


@dataclass(frozen=True)
class PaDiMFunctions:
    """PaDiM's swappable maths: ``groups(maps, mode) -> [B, D_g, h_g, w_g]`` per group,
    ``distances(emb [B, D, P], mean [P, D], statistic [P, D, D]) -> [B, P]`` where the fitted
    ``statistic`` is the buffer named ``statistic`` (Cholesky factors, or explicit inverses), and
    ``anomaly_map(grids, size, sigma) -> (map, map max)``."""

    groups: Callable = padim_groups
    distances: Callable = mahalanobis_distances
    statistic: str = "cholesky"
    anomaly_map: Callable = anomaly_map_from_grids


@register_detector_module
class PaDiMModule(VariantModule):
    """PaDiM scoring: per group (a layer, or all layers concatenated) the Mahalanobis distance
    of each position's embedding to that position's Gaussian.

    Buffers per group ``g``: ``mean_g [P_g, D_g]``, ``cholesky_g [P_g, D_g, D_g]`` (lower factors;
    the ``"release"`` variant: ``cov_inv_g``, the explicit float32 inverses, as the release),
    ``channel_index_g [D_g]`` where a channel subset is kept. Options: ``mode``, ``variant``
    (``"release"``: inverse-based Mahalanobis in float64, maps ``align_corners=True`` smoothed in
    float64; the release's global min-max over the test set is the evaluation protocol's step).
    """

    method = "padim"
    VARIANTS: ClassVar[dict[str, PaDiMFunctions]] = {
        DEFAULT_VARIANT: PaDiMFunctions(),
        RELEASE_VARIANT: PaDiMFunctions(distances=release_mahalanobis, statistic="cov_inv",
                                        anomaly_map=release_level_mean_anomaly_map),
    }

    def __init__(self, *, mode: str = "per_layer", **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in PADIM_MODES:
            raise ValueError(f"unknown PaDiM mode {mode!r}{closest_name_hint(mode, PADIM_MODES)}: "
                             "choose 'per_layer' (release) or 'concatenated' (paper)")
        self.mode = mode

    def method_settings(self) -> dict:
        return {"mode": self.mode}

    @property
    def num_groups(self) -> int:
        return sum(1 for name in self._buffers if name.startswith("mean_"))

    def required_buffers(self) -> list[str]:
        groups = max(self.num_groups, 1)
        return [f"{kind}_{g}" for g in range(groups) for kind in ("mean", self.functions.statistic)]

    def group_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
        """Per group ``(mean, statistic (Cholesky factor or inverse), channel_index or None)``."""
        statistic = self.functions.statistic
        return [(self._buffers[f"mean_{g}"], self._buffers[f"{statistic}_{g}"], self._buffers.get(f"channel_index_{g}"))
                for g in range(self.num_groups)]

    def embed(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Used layers -> one (channel-subset) embedding ``[B, D_g, h_g, w_g]`` per group."""
        groups = self.functions.groups([f.float() for f in features], self.mode)
        indices = [index for _, _, index in self.group_tensors()] or [None] * len(groups)
        return [g if index is None else g.index_select(1, index.to(g.device)) for g, index in zip(groups, indices)]

    def score_grids(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], None]:
        grids = []
        for emb, (mean, factor, _) in zip(self.embed(features), self.group_tensors()):
            b, d, h, w = emb.shape
            dist = self.functions.distances(emb.reshape(-1, d, h * w), mean.float(), factor.float())
            grids.append(dist.reshape(-1, h, w))  # [B, h_g, w_g]
        return grids, None
