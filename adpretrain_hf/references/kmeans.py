"""KMeans through maintained implementations, and KMeans-diverse reference selection.

Two places cluster: the semantic-aligned matcher (``N_c`` centres per grid cell, appendix C)
and the "diverse references" strategy (appendix C, first strategy: cluster the normal pool,
spread the references evenly over the clusters, nearest-to-centre first). Both go through
:func:`kmeans_centers`, which dispatches to faiss or scikit-learn by name (a registry, not
an if/else chain) so the clustering itself is never hand-written here.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]

KMEANS_NITER = 25
"""Lloyd iterations for faiss (sklearn iterates to convergence, up to its own ``max_iter``)."""
KMEANS_NUM_THREADS = 1
"""OpenMP/BLAS threads while clustering. The problems here are small (a grid cell's patch
features, a pool's global features: thousands of points, <= tens of centres), so thread
start-up and oversubscription cost more than they save: on a loaded 2-core machine the
matcher's 25 per-cell fits took 6-15 s with the default threads and 0.3-0.7 s with one."""


def _faiss_kmeans(points: np.ndarray, num_clusters: int, seed: int) -> np.ndarray:
    import faiss  # optional dependency (extras ``cpu`` / ``gpu``)

    kmeans = faiss.Kmeans(
        points.shape[1],
        num_clusters,
        niter=KMEANS_NITER,
        seed=seed,
        verbose=False,
        # Use every point (faiss subsamples above 256 points per centroid by default; the
        # appendix clusters *all* patch features of a cell) and allow tiny pools quietly.
        max_points_per_centroid=max(1, points.shape[0]),
        min_points_per_centroid=1,
    )
    kmeans.train(points)
    return np.asarray(kmeans.centroids, dtype=np.float32)


def _sklearn_kmeans(points: np.ndarray, num_clusters: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=num_clusters, n_init="auto", random_state=seed)
    kmeans.fit(points)
    return kmeans.cluster_centers_.astype(np.float32)


KMEANS_BACKENDS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "faiss": _faiss_kmeans,
    "sklearn": _sklearn_kmeans,
}
"""Backend name -> ``fn(points [M, D] float32, num_clusters, seed) -> centres [k, D]``."""


def resolve_kmeans_backend(backend: str) -> str:
    """Validate ``backend``; fall back from faiss to sklearn (with a warning) when faiss is absent.

    faiss is an optional extra (``faiss-cpu`` / ``faiss-gpu``, never both), so a default of
    ``"faiss"`` must still work on a machine without it.
    """
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"unknown kmeans_backend {backend!r}: choose one of {sorted(KMEANS_BACKENDS)}")
    if backend == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError:
            warnings.warn(
                "faiss is not installed: using scikit-learn KMeans instead "
                "(install adpretrain-hf[cpu] or [gpu] for faiss)",
                stacklevel=3,
            )
            return "sklearn"
    return backend


def _as_points(points: ArrayLike, name: str) -> np.ndarray:
    if isinstance(points, torch.Tensor):
        points = points.detach().float().cpu().numpy()
    elif not isinstance(points, np.ndarray):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of shape [N, D], got {type(points).__name__}")
    if points.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D], got {tuple(points.shape)}")
    if not np.isfinite(points).all():
        raise ValueError(f"{name} contains NaN or inf values: clean the features before clustering")
    return np.ascontiguousarray(points, dtype=np.float32)


def kmeans_centers(points: ArrayLike, num_clusters: int, seed: int = 0, backend: str = "faiss") -> np.ndarray:
    """Cluster ``points [M, D]`` into ``num_clusters`` centres ``[num_clusters, D]`` (float32).

    Deterministic for a fixed ``seed`` and backend.
    """
    array = _as_points(points, "points")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    if array.shape[0] < num_clusters:
        raise ValueError(
            f"cannot form {num_clusters} clusters from {array.shape[0]} points: "
            "give more points or ask for fewer clusters"
        )
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    with threadpool_limits(limits=KMEANS_NUM_THREADS):
        return KMEANS_BACKENDS[resolve_kmeans_backend(backend)](array, num_clusters, seed)


def kmeans_diverse_references(
    global_features: ArrayLike,
    k: int = 8,
    num_clusters: Optional[int] = None,
    seed: int = 0,
    backend: str = "sklearn",
) -> list[int]:
    """Pick ``k`` diverse reference images from a normal pool (appendix C, first strategy).

    The pool is clustered with KMeans on one global feature per image; the ``k`` picks are
    dealt round-robin over the clusters (largest cluster first, ties by cluster id), and
    within a cluster the member nearest its centre (Euclidean) comes first, then the next
    nearest. Why: references should cover the class's modes (not all come from the densest
    one, as random picks tend to) while each pick is a typical member of its mode.

    Args:
        global_features: ``[N, D]`` one vector per pool image (e.g. mean-pooled backbone
            features; the caller chooses).
        k: number of references, ``1 <= k <= N``.
        num_clusters: KMeans clusters; ``None`` means ``k`` (one pick per cluster).
        seed: KMeans seed.
        backend: a key of :data:`KMEANS_BACKENDS`; sklearn's k-means++ with several
            restarts suits the small ``N`` of a reference pool.

    Returns:
        ``k`` distinct pool indices, in pick order.
    """
    features = _as_points(global_features, "global_features")
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"cannot pick k={k} references from a pool of {n} images: use 1 <= k <= {n}")
    num_clusters = k if num_clusters is None else num_clusters
    if not 1 <= num_clusters <= n:
        raise ValueError(f"num_clusters={num_clusters} must be between 1 and the pool size {n}")
    centers = kmeans_centers(features, num_clusters, seed=seed, backend=backend)
    distances = torch.cdist(torch.from_numpy(features).double(), torch.from_numpy(centers).double())  # [N, k_c]
    labels = distances.argmin(dim=1)
    to_center = distances.gather(1, labels[:, None]).squeeze(1)
    queues = []  # per cluster: member indices, nearest to the centre first
    for cluster in range(num_clusters):
        members = torch.nonzero(labels == cluster).flatten()
        if members.numel():
            order = torch.argsort(to_center[members], stable=True)
            queues.append(members[order].tolist())
    queues.sort(key=len, reverse=True)  # stable: equal sizes keep cluster-id order
    picks: list[int] = []
    depth = 0
    while len(picks) < k:  # terminates: the queues hold all N >= k images
        for queue in queues:
            if depth < len(queue) and len(picks) < k:
                picks.append(queue[depth])
        depth += 1
    return picks
