"""Per-query cost of semantic-aligned reference matching (appendix C) vs the paper's ~0.1 GFLOPs.

Counts the FLOPs of each step for one query at the paper's settings (ResNet-18 stem + layer1,
S = 5, N_c = 5, 224 px) and times ``SemanticAlignedMatcher.match`` on a pool of normal images.

* Backbone and histogram FLOPs: counted with ``torch.utils.flop_counter.FlopCounterMode``
  (convolutions and matmuls; BN/ReLU/max-pool are not counted, they are < 1 % here).
* KL FLOPs: analytic, ``2 L P`` per (query, pool image) pair for the cross term
  ``sum_p p log(P q)`` (one multiply-add per bin), plus ``L`` subtractions, ``L`` max-compares
  and ``S^2`` adds; the query's ``log`` (``L P``) once per query; the pool's self term is
  computed once at fit time. Cross-checked against FlopCounterMode's count of the einsum.

Wall times use random textured images (the content does not change the cost). The machine's
other load changes wall times; FLOPs are exact.

Run: ``python benchmarks/aligned_matching.py [--pool 200] [--queries 16] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from adpretrain_hf.references import (
    GRID_SIZE_S,
    NUM_CLUSTERS_NC,
    SemanticAlignedMatcher,
    block_kl_alignment,
    codeword_histograms,
)

PAPER_CLAIM_GFLOPS = 0.1  # appendix C, "Further Discussion": cost per (I, I_i) with ResNet-18


def count_flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def textured_images(n: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 3, size, size, generator=generator)
    return torch.nn.functional.avg_pool2d(noise, 9, 1, 4) * 3 + 0.3 * noise


def median_seconds(fn, images: torch.Tensor) -> float:
    """Median wall time of ``fn(image [1, 3, H, W])`` over the images, one call each."""
    times = []
    for i in range(images.shape[0]):
        start = time.perf_counter()
        fn(images[i : i + 1])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=200, help="normal pool size N")
    parser.add_argument("--queries", type=int, default=16, help="timed single-query calls")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kmeans-backend", default="faiss", choices=["faiss", "sklearn"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init ResNet-18: costs do not depend on weights
        matcher = SemanticAlignedMatcher(device=args.device, kmeans_backend=args.kmeans_backend, pool_chunk_size=32)
    net = matcher.feature_net
    one = torch.zeros(1, 3, args.image_size, args.image_size, device=matcher.device)

    # -- FLOPs for one query ------------------------------------------------------------------
    with torch.no_grad():
        conv1_flops = count_flops(lambda x: net.maxpool(net.relu(net.bn1(net.conv1(x)))), one)
        backbone_flops = count_flops(net, one)
        features = net(one)  # [1, C1, H1, W1]
    _, channels, height, width = features.shape
    locations, bins = height * width, GRID_SIZE_S**2 * NUM_CLUSTERS_NC
    codebook = torch.randn(bins, channels, device=matcher.device)
    tokens = features.flatten(2).transpose(1, 2)
    histogram_flops = count_flops(codeword_histograms, tokens, codebook)
    kl_pair_flops = 2 * locations * bins + 2 * locations + GRID_SIZE_S**2
    kl_query_flops = locations * bins  # log(P q), once per query
    hist = codeword_histograms(tokens, codebook)
    pool_hist = hist.expand(4, -1, -1).contiguous()
    counted_einsum = count_flops(
        block_kl_alignment, hist, pool_hist, torch.zeros(locations, dtype=torch.long, device=matcher.device), 1
    )
    assert counted_einsum == 4 * 2 * locations * bins, (counted_einsum, 4 * 2 * locations * bins)

    # -- wall time ------------------------------------------------------------------------------
    pool = textured_images(args.pool, args.image_size, seed=0)
    queries = textured_images(args.queries, args.image_size, seed=1)
    start = time.perf_counter()
    matcher.fit(pool)
    fit_seconds = time.perf_counter() - start
    matcher.match(queries[:1])  # warm-up
    per_query = median_seconds(matcher.match, queries)
    features_only = median_seconds(matcher.histograms, queries)
    start = time.perf_counter()
    matcher.match(queries)
    batched = (time.perf_counter() - start) / args.queries

    per_query_flops = backbone_flops + histogram_flops + kl_query_flops + args.pool * kl_pair_flops
    g = 1e-9
    print(f"\nSemantic-aligned matching cost: image {args.image_size}px, feature map {channels}x{height}x{width}, "
          f"S={GRID_SIZE_S}, N_c={NUM_CLUSTERS_NC} ({bins} codewords), pool N={args.pool}, device {matcher.device}, "
          f"{args.threads} torch threads\n")
    print("| step | per | GFLOPs |")
    print("| --- | --- | ---: |")
    print(f"| ResNet-18 conv1+bn+relu+maxpool | query | {conv1_flops * g:.3f} |")
    print(f"| ResNet-18 stem + layer1 (total) | query | {backbone_flops * g:.3f} |")
    print(f"| cosine histograms ({locations} x {bins}) | query | {histogram_flops * g:.4f} |")
    print(f"| log of query histograms | query | {kl_query_flops * g:.4f} |")
    print(f"| block-wise KL, max, mean (Eq. 9) | (query, pool image) pair | {kl_pair_flops * g:.5f} |")
    print(f"| KL over the whole pool | query | {args.pool * kl_pair_flops * g:.3f} |")
    print(f"| **total** | query | **{per_query_flops * g:.3f}** |")
    print(f"| total / N (amortised per pair) | pair | {per_query_flops / args.pool * g:.4f} |")
    print(f"| paper's claim | pair | ~{PAPER_CLAIM_GFLOPS} |")
    print("\n| timing | seconds |")
    print("| --- | ---: |")
    print(f"| fit on {args.pool} images (features, 25 KMeans, histograms) | {fit_seconds:.2f} |")
    print(f"| match, one query (median of {args.queries}) | {per_query:.4f} |")
    print(f"|   of which features + histograms | {features_only:.4f} |")
    print(f"|   of which KL vs {args.pool} pool images | {per_query - features_only:.4f} |")
    print(f"| match, {args.queries} queries in one call, per query | {batched:.4f} |")
    print(f"\npool histograms stored: {matcher.pool_histograms.numel() * 4 / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
