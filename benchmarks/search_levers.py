"""What a line engineer can trade when PatchCore's exact bank search is too slow, and what it costs.

    python benchmarks/search_levers.py --data /work/shared/data/realiad-mini --category magnetic_tile

One Real-IAD class, few images (seeded): ``--train`` OK images fit PatchCore on backbone features
(EfficientNet-Lite0, real weights, 224 px), ``--test-ok`` other OK and ``--test-ng`` NG images are
scored. Every lever is measured on the same images, against the exact search on the default setting:

- ``exact``: PatchCore's exact search (``nearest_neighbors``, the prepared blocked GEMM), 10 % coreset;
- ``hnsw`` / ``ivf``: faiss ``IndexHNSWFlat`` (M 32, efSearch as given) / ``IndexIVFFlat`` (nlist
  ~ 4 sqrt(bank), nprobe as given) over the same bank; recall@1 = share of patches whose
  approximate neighbour is the exact one (the index is built once, not timed);
- ``stride 8``: the query grid at stride 8 (the taps at strides 8 and 16, as anomalib's default
  layers), so 4x fewer queries and bank rows;
- ``coreset x%``: a smaller memory bank.

Image score: the largest patch distance (the plain PatchCore score, the same for every lever, so the
AUROC differences are the lever's). ``search ms/img``: the bank search alone, 1 thread, median.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from latency import median_seconds as latency_median_seconds  # noqa: E402  (the benchmarks' one timer)

from adpretrain_hf import ADPretrainConfig, ADPretrainModel  # noqa: E402
from adpretrain_hf.deployment import fit_detector  # noqa: E402
from adpretrain_hf.modeling.image_processing_adpretrain import processor_for  # noqa: E402
from adpretrain_hf.modeling.matching_adpretrain import nearest_neighbors  # noqa: E402
from adpretrain_hf.modeling.scoring_adpretrain import PATCHCORE_DIM, aggregate_patch_features  # noqa: E402

HNSW_M = 32


def pick_images(root: Path, category: str, train: int, test_ok: int, test_ng: int, seed: int):
    rng = random.Random(seed)
    ok = sorted((root / category / "OK").rglob("*.jpg"))
    ng = sorted((root / category / "NG").rglob("*.jpg"))
    rng.shuffle(ok)
    rng.shuffle(ng)
    return ok[:train], ok[train : train + test_ok], ng[:test_ng]


def median_seconds(run, repeats: int = 3) -> float:
    """One warm-up call, then the median of ``repeats`` timed calls (latency.py's timer)."""
    return latency_median_seconds(run, warmup=1, repeats=repeats)


@torch.no_grad()
def embeddings(detector, pixels: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """PatchCore's patch embeddings ``[N, P, D]`` of ``pixels`` (the detector's own aggregation)."""
    out = []
    for start in range(0, pixels.shape[0], batch):
        features = detector.extract_features(pixels[start : start + batch])
        emb = aggregate_patch_features(features, int(detector.config.method_settings.get("embedding_dim", PATCHCORE_DIM)))
        out.append(emb.reshape(emb.shape[0], -1, emb.shape[-1]))
    return torch.cat(out)


def faiss_index(kind: str, bank: np.ndarray, setting: int):
    import faiss

    d = bank.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M)
        index.hnsw.efSearch = setting
        index.add(bank)
        return index
    nlist = max(1, int(4 * np.sqrt(bank.shape[0])))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    index.train(bank)
    index.add(bank)
    index.nprobe = setting
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/work/shared/data/realiad-mini", help="a Real-IAD-layout folder")
    parser.add_argument("--category", default="magnetic_tile", help="one class of it")
    parser.add_argument("--train", type=int, default=20, help="OK images PatchCore is fitted on")
    parser.add_argument("--test-ok", type=int, default=15, help="held-out OK images scored")
    parser.add_argument("--test-ng", type=int, default=15, help="NG images scored")
    parser.add_argument("--seed", type=int, default=0, help="image draw")
    parser.add_argument("--threads", type=int, default=1, help="torch / faiss threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)

    model = ADPretrainModel(ADPretrainConfig.from_preset("efficientnet-lite0")).eval()
    model.load_backbone_weights(None)
    processor = processor_for(model)
    train, test_ok, test_ng = pick_images(Path(args.data), args.category, args.train, args.test_ok, args.test_ng, args.seed)
    load = lambda paths: processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]  # noqa: E731
    train_px, test_px = load(train), load(test_ok + test_ng)
    labels = [0] * len(test_ok) + [1] * len(test_ng)
    n_test = len(labels)

    settings = [("exact", None, 0.1), ("stride 8", (1, 2), 0.1), ("coreset 5%", None, 0.05), ("coreset 1%", None, 0.01)]
    rows, exact_idx = [], {}
    for name, positions, ratio in settings:
        detector = fit_detector(model, "patchcore", train_px, feature_kind="backbone", layer_positions=positions,
                                method_kwargs={"coreset_ratio": ratio}, progress=False, batch_size=8)
        bank = detector.fitted.memory_bank.float()
        emb = embeddings(detector, test_px)
        flat = emb.reshape(-1, emb.shape[-1])
        squared, idx = nearest_neighbors(flat, bank, metric="l2", backend="torch")
        seconds = median_seconds(lambda: nearest_neighbors(flat, bank, metric="l2", backend="torch"))
        scores = squared.sqrt().reshape(n_test, -1).amax(dim=1)
        rows.append((name, tuple(bank.shape), emb.shape[1], "-", 1000 * seconds / n_test, roc_auc_score(labels, scores.numpy())))
        if name == "exact":
            exact_idx = {"bank": bank.numpy(), "flat": flat.numpy(), "idx": idx.numpy()}
    for kind, values in (("hnsw", (64, 16)), ("ivf", (8, 1))):
        for setting in values:
            index = faiss_index(kind, exact_idx["bank"], setting)
            queries = np.ascontiguousarray(exact_idx["flat"])
            dist, idx = index.search(queries, 1)
            seconds = median_seconds(lambda: index.search(queries, 1))
            recall = float((idx[:, 0] == exact_idx["idx"]).mean())
            scores = np.sqrt(np.maximum(dist[:, 0], 0.0)).reshape(n_test, -1).max(axis=1)
            label = f"{kind} ({'efSearch' if kind == 'hnsw' else 'nprobe'} {setting})"
            rows.append((label, exact_idx["bank"].shape, queries.shape[0] // n_test, f"{recall:.3f}",
                         1000 * seconds / n_test, roc_auc_score(labels, scores)))

    print(f"\n{args.category}: fitted on {len(train)} OK, scored {len(test_ok)} OK + {len(test_ng)} NG; EfficientNet-Lite0 "
          f"backbone features, 224 px, {args.threads} thread(s), load avg {os.getloadavg()[0]:.1f}\n")
    print("| lever | bank rows x dim | queries / image | recall@1 | search ms / image | image AUROC |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, shape, queries, recall, ms, auroc in rows:
        print(f"| {name} | {shape[0]} x {shape[1]} | {queries} | {recall} | {ms:.1f} | {auroc:.3f} |")


if __name__ == "__main__":
    main()
