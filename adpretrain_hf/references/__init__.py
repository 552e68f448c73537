"""Reference selection: which normal images serve as few-shot references (appendix C).

* :func:`select_references` — one entry point over the strategies "first", "random",
  "kmeans" (diverse) and "aligned" (per-query, semantic-aligned).
* :func:`match_aligned` — per query, the ``K`` best aligned pool images, never the query itself.
* :class:`SemanticAlignedMatcher` — the appendix's histogram + block-wise KL matcher.
* :func:`kmeans_diverse_references` — references spread over KMeans clusters of the pool.
"""

from .aligned import GRID_SIZE_S, NUM_CLUSTERS_NC, TOP_K, SemanticAlignedMatcher, exclusion_mask
from .feature_net import build_feature_net
from .histograms import block_kl_alignment, codeword_histograms, grid_cell_index, kl_self_term
from .kmeans import KMEANS_BACKENDS, kmeans_centers, kmeans_diverse_references
from .selection import REFERENCE_STRATEGIES, SelectionRequest, match_aligned, select_references

__all__ = [
    "GRID_SIZE_S",
    "KMEANS_BACKENDS",
    "NUM_CLUSTERS_NC",
    "REFERENCE_STRATEGIES",
    "SelectionRequest",
    "SemanticAlignedMatcher",
    "TOP_K",
    "block_kl_alignment",
    "build_feature_net",
    "codeword_histograms",
    "exclusion_mask",
    "grid_cell_index",
    "kl_self_term",
    "kmeans_centers",
    "kmeans_diverse_references",
    "match_aligned",
    "select_references",
]
