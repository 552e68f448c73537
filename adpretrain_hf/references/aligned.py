"""Semantic-aligned reference matching (appendix C): per-query references from a normal pool.

Fit once on the normal pool: early CNN features -> ``S x S`` grid -> KMeans (``N_c`` centres
per cell) -> codebook of ``S^2 N_c`` centres -> one histogram over the codebook per pool
image and location, stored. Per query: its own histograms, then the block-wise KL distance
(Eq. 9) to every stored pool image, and the ``K`` smallest. Why: residual features subtract
the nearest reference features, so references whose objects are placed and turned like the
query's leave fewer normal patterns unexplained than fixed references do.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .feature_net import FeatureNetSpec, build_feature_net, default_stem
from .histograms import block_kl_alignment, codeword_histograms, grid_cell_index, kl_self_term
from .kmeans import kmeans_centers, resolve_kmeans_backend

GRID_SIZE_S = 5
"""Grid cells per side of the early feature map (appendix C, ``S``)."""
NUM_CLUSTERS_NC = 5
"""KMeans centres per grid cell (appendix C, ``N_c``)."""
TOP_K = 8
"""References returned per query (appendix C, ``K``)."""

_FORMAT_VERSION = "1"


class SemanticAlignedMatcher:
    """Retrieve, for each query image, the ``K`` best spatially aligned normal images.

    Args:
        feature_net: the early-stage CNN: ``None`` (ResNet-18 stem + layer1, random init, warns),
            a ResNet-18 state-dict path, or a ``torch.nn.Module`` (see
            :func:`~adpretrain_hf.references.feature_net.build_feature_net`).
        grid_size: ``S``. num_clusters: ``N_c``. top_k: ``K`` (default of :meth:`match`).
        device: where features, histograms and KL run; default CUDA when available, else CPU.
        kmeans_backend: ``"faiss"`` (falls back to sklearn with a warning if faiss is absent)
            or ``"sklearn"``.
        seed: KMeans seed. batch_size: images per backbone pass. pool_chunk_size: pool images
            per KL step (memory ``Q * chunk * H1 * W1`` floats). progress: show tqdm bars.

    Memory: the stored pool histograms take ``N * H1 * W1 * S^2 * N_c * 4`` bytes
    (about 1.6 MB per pool image at 224 px with the paper's S = N_c = 5).
    """

    def __init__(
        self,
        feature_net: FeatureNetSpec = None,
        grid_size: int = GRID_SIZE_S,
        num_clusters: int = NUM_CLUSTERS_NC,
        top_k: int = TOP_K,
        device: Optional[Union[str, torch.device]] = None,
        kmeans_backend: str = "faiss",
        *,
        seed: int = 0,
        batch_size: int = 32,
        pool_chunk_size: int = 64,
        progress: bool = False,
    ) -> None:
        for name, value in (("grid_size", grid_size), ("num_clusters", num_clusters), ("top_k", top_k),
                            ("batch_size", batch_size), ("pool_chunk_size", pool_chunk_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        backend = resolve_kmeans_backend(kmeans_backend)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        net, self.random_init = build_feature_net(feature_net)
        self.feature_net: nn.Module = net.to(self.device).eval()
        self.grid_size, self.num_clusters, self.top_k = grid_size, num_clusters, top_k
        self.kmeans_backend, self.seed = backend, seed
        self.batch_size, self.pool_chunk_size, self.progress = batch_size, pool_chunk_size, progress
        self.image_size: Optional[tuple[int, int]] = None
        self.feature_size: Optional[tuple[int, int]] = None
        self.codebook: Optional[torch.Tensor] = None  # [S^2, N_c, C1]
        self.pool_histograms: Optional[torch.Tensor] = None  # [N, H1*W1, S^2*N_c]
        self._pool_self_term: Optional[torch.Tensor] = None  # [N, H1*W1]
        self._cell_index: Optional[torch.Tensor] = None  # [H1*W1]

    # -- public API ---------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.pool_histograms is not None

    @property
    def num_pool(self) -> int:
        """Number of normal pool images the matcher was fitted on (0 before fit)."""
        return 0 if self.pool_histograms is None else self.pool_histograms.shape[0]

    @torch.no_grad()
    def extract_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Early feature maps ``F_i``: ``[N, 3, H, W]`` pixel values -> ``[N, C1, H1, W1]`` float32."""
        _check_images(pixel_values)
        maps = []
        starts = range(0, pixel_values.shape[0], self.batch_size)
        for start in tqdm(starts, desc="aligned matcher: features", disable=not self.progress, leave=False):
            out = self.feature_net(pixel_values[start : start + self.batch_size].to(self.device, torch.float32))
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                raise ValueError(
                    "feature_net must map [N, 3, H, W] to [N, C1, H1, W1] feature maps, got "
                    f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
                )
            maps.append(out.float())
        return torch.cat(maps)

    @torch.no_grad()
    def fit(self, normal_pixel_values: torch.Tensor) -> "SemanticAlignedMatcher":
        """Build the codebook and store the histograms of the normal pool ``[N, 3, H, W]``."""
        features = self.extract_features(normal_pixel_values)  # [N, C1, H1, W1]
        _, channels, height, width = features.shape
        cell_index = grid_cell_index(height, width, self.grid_size)  # [L]
        tokens = features.flatten(2).transpose(1, 2)  # [N, L, C1]
        centers = []
        for cell in range(self.grid_size**2):
            # P^{u,v}: every normal patch feature of cell (u, v), over all pool images.
            points = tokens[:, (cell_index == cell).to(tokens.device)].reshape(-1, channels)
            if points.shape[0] < self.num_clusters:
                raise ValueError(
                    f"grid cell {cell} holds {points.shape[0]} features, fewer than num_clusters="
                    f"{self.num_clusters}: use more pool images or fewer clusters"
                )
            centers.append(torch.from_numpy(kmeans_centers(points, self.num_clusters, self.seed, self.kmeans_backend)))
        self.codebook = torch.stack(centers).to(self.device)  # [S^2, N_c, C1]
        self.image_size = tuple(normal_pixel_values.shape[-2:])
        self.feature_size = (height, width)
        self._cell_index = cell_index.to(self.device)
        self._set_pool_histograms(codeword_histograms(tokens, self.codebook.flatten(0, 1), self.pool_chunk_size))
        return self

    @torch.no_grad()
    def histograms(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Histograms of images over the fitted codebook: ``[N, 3, H, W] -> [N, H1*W1, S^2*N_c]``."""
        self._check_fitted()
        _check_images(pixel_values)
        if tuple(pixel_values.shape[-2:]) != self.image_size:
            raise ValueError(
                f"images are {tuple(pixel_values.shape[-2:])} but the pool was {self.image_size}: "
                "preprocess queries to the pool's image size"
            )
        tokens = self.extract_features(pixel_values).flatten(2).transpose(1, 2)
        return codeword_histograms(tokens, self.codebook.flatten(0, 1), self.pool_chunk_size)

    @torch.no_grad()
    def match(
        self,
        query_pixel_values: torch.Tensor,
        top_k: Optional[int] = None,
        exclude: Optional[Sequence[Iterable[int]]] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``K`` aligned pool images per query; the one top-k of every aligned selection.

        Args:
            query_pixel_values: ``[Q, 3, H, W]``, preprocessed like the pool.
            top_k: ``K``; defaults to the matcher's ``top_k``.
            exclude: per query, pool indices it may not get (e.g. the pool copies of the query
                itself: an image referencing itself has an all-zero residual); ``None``: none.

        Returns:
            ``indices [Q, K]`` (int64, pool indices, best first; ties resolved by one
            ``torch.topk``) and ``distances [Q, N]`` (float32 ``D^align`` of Eq. 9 to every pool
            image, excluded ones included), both on the CPU.
        """
        self._check_fitted()
        k = self.top_k if top_k is None else top_k
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.num_pool:
            raise ValueError(f"top_k={k!r} must be an integer in [1, {self.num_pool}] (the pool size)")
        _check_images(query_pixel_values)
        mask = None if exclude is None else exclusion_mask(exclude, query_pixel_values.shape[0], self.num_pool, k)  # [Q, N]
        query_histograms = self.histograms(query_pixel_values)
        distances = block_kl_alignment(
            query_histograms, self.pool_histograms, self._cell_index, self.grid_size**2,
            pool_self_term=self._pool_self_term, chunk_size=self.pool_chunk_size,
        )
        ranked = distances if mask is None else distances.masked_fill(mask.to(distances.device), math.inf)
        indices = torch.topk(ranked, k, dim=1, largest=False, sorted=True).indices
        return indices.cpu(), distances.cpu()

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write the fitted state (codebook, pool histograms, feature-net weights) to a safetensors file."""
        from safetensors.torch import save_file

        self._check_fitted()
        tensors = {"codebook": self.codebook, "pool_histograms": self.pool_histograms}
        tensors.update({f"feature_net.{k}": v for k, v in self.feature_net.state_dict().items()})
        config = {
            "grid_size": self.grid_size, "num_clusters": self.num_clusters, "top_k": self.top_k,
            "kmeans_backend": self.kmeans_backend, "seed": self.seed, "image_size": list(self.image_size),
            "feature_size": list(self.feature_size), "random_init": self.random_init,
        }
        metadata = {"format": "adpretrain_hf.references.SemanticAlignedMatcher", "version": _FORMAT_VERSION,
                    "config": json.dumps(config)}
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, os.fspath(path), metadata=metadata)

    @classmethod
    def load(
        cls,
        path: Union[str, "os.PathLike[str]"],
        feature_net: Optional[nn.Module] = None,
        device: Optional[Union[str, torch.device]] = None,
        **kwargs,
    ) -> "SemanticAlignedMatcher":
        """Restore a matcher written by :meth:`save`; no image is re-processed.

        ``feature_net`` is only needed when the matcher was saved with a custom (non ResNet-18)
        network: pass a module of the same architecture; a copy of it receives the saved
        weights (the stored histograms are only valid with them). ``kwargs`` go to the
        constructor (``batch_size``, ``pool_chunk_size``, ``progress``).
        """
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != "adpretrain_hf.references.SemanticAlignedMatcher":
                raise ValueError(f"{os.fspath(path)!r} was not written by SemanticAlignedMatcher.save()")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        config = json.loads(metadata["config"])
        net_state = {k[len("feature_net."):]: v for k, v in tensors.items() if k.startswith("feature_net.")}
        net = default_stem() if feature_net is None else copy.deepcopy(feature_net)
        try:
            net.load_state_dict(net_state, strict=True)
        except RuntimeError as error:
            raise ValueError(
                "the saved feature_net weights do not fit the network: the matcher was saved with a custom "
                f"feature_net, pass a module of the same architecture as feature_net= ({error})"
            ) from None
        matcher = cls(net, config["grid_size"], config["num_clusters"], config["top_k"], device,
                      config["kmeans_backend"], seed=config["seed"], **kwargs)
        matcher.random_init = config["random_init"]
        matcher.image_size = tuple(config["image_size"])
        matcher.feature_size = tuple(config["feature_size"])
        matcher.codebook = tensors["codebook"].to(matcher.device)
        matcher._cell_index = grid_cell_index(*matcher.feature_size, matcher.grid_size).to(matcher.device)
        matcher._set_pool_histograms(tensors["pool_histograms"].to(matcher.device))
        return matcher

    # -- helpers ------------------------------------------------------------------
    def _set_pool_histograms(self, histograms: torch.Tensor) -> None:
        self.pool_histograms = histograms
        self._pool_self_term = kl_self_term(histograms)  # once per pool, reused by every match

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("SemanticAlignedMatcher is not fitted: call fit(normal_pixel_values) first")


def _check_images(pixel_values: torch.Tensor) -> None:
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a [N, 3, H, W] torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"pixel_values must be [N, 3, H, W] preprocessed images, got shape {tuple(pixel_values.shape)}")
    if pixel_values.shape[0] == 0:
        raise ValueError("no images given: pass at least one image")


def exclusion_mask(exclude: Sequence[Iterable[int]], num_queries: int, num_pool: int, k: int) -> torch.Tensor:
    """``exclude`` (per query, pool indices to skip) as a ``[Q, N]`` bool mask; checks ``k`` still fits.

    Every query must keep at least ``k`` pool images, else its top-``k`` would hold an excluded one.
    """
    if len(exclude) != num_queries:
        raise ValueError(
            f"exclude has {len(exclude)} entries but there are {num_queries} queries: pass one list of pool indices per query"
        )
    mask = torch.zeros(num_queries, num_pool, dtype=torch.bool)
    for query, skipped in enumerate(exclude):
        skipped = [int(j) for j in skipped]
        if any(not 0 <= j < num_pool for j in skipped):
            raise ValueError(
                f"exclude[{query}]={skipped} holds a pool index outside [0, {num_pool - 1}]: pass positions in the fitted pool"
            )
        mask[query, skipped] = True
        left = num_pool - int(mask[query].sum())
        if left < k:
            raise ValueError(
                f"query {query} may use only {left} of the {num_pool} pool images after exclusions, fewer than "
                f"k={k}: use k <= {left} or a larger pool"
            )
    return mask
