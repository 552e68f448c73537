"""Which PatchCore setting decides whether pretrained features help it? (Kolektor regression.)

    python benchmarks/patchcore_variants.py --data WORK/data-kolektor --models WORK/run-magnetic_tile-both-seed{0,1,2}/model

Before round 2, PatchCore with pretrained features beat its backbone baseline on Kolektor (82.1 vs
78.4, one seed); after it, it loses (75.5 ± 1.7 vs 80.7). Round 2 changed the training recipe and
two PatchCore settings at once; this script isolates the PatchCore part by scoring the SAME
checkpoints and the SAME backbone with four PatchCore variants in one run (one feature pass,
shared by all variants through the evaluation runner's feature cache):

- ``patchcore``: the package's PatchCore: the tapped layers concatenated (``min(1024, sum C_l)``
  channels, each channel once) and the image score of PatchCore's Eq. 7 (reweighted largest raw
  nearest-neighbour distance);
- ``patchcore-mapmax``: the same embedding, image score = max of the smoothed anomaly map;
- ``patchcore-equal``: the first release's embedding: each layer's channels average-pooled to 1024
  (*widened* when the layer is narrower, so each layer fills a third of the embedding whatever its
  width) and the stacked layers pooled to 1024; Eq. 7 score;
- ``patchcore-equal-mapmax``: that embedding with the map-max score (the pre-round-2 PatchCore).

The variants differ in how much each tapped layer weighs in the nearest-neighbour distance:
concatenation weighs a layer by its channel count (EfficientNet-Lite0's last three taps: 24, 40 and
112 channels at strides 4, 8 and 16), the widened embedding weighs the three equally. Cells:
I-AUROC / P-AUROC / PRO in %, mean ± std over the checkpoints (the backbone row: one run).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from adpretrain_hf.detectors import DETECTORS
from adpretrain_hf.detectors import patchcore as patchcore_module
from adpretrain_hf.detectors.patchcore import PatchCore
from adpretrain_hf.evaluation import evaluate_model
from adpretrain_hf.metrics.names import METRIC_NAMES
from adpretrain_hf.modeling.scoring_adpretrain import PATCHCORE_DIM, PATCHCORE_NEIGHBOURHOOD, largest_grid, resize_to_grid

BACKBONE_KINDS = ("backbone", "residual")


def equal_layer_embedding(maps: Sequence[torch.Tensor], dim: int = PATCHCORE_DIM) -> torch.Tensor:
    """The first release's PatchCore embedding: per layer ``C_l -> dim`` by adaptive average
    pooling (upward = each channel repeated), layers stacked and pooled ``L*dim -> dim``.
    ``maps``: per layer ``[B, C_l, h_l, w_l]`` -> ``[B, h, w, dim]``."""
    grid = largest_grid(maps)
    k = PATCHCORE_NEIGHBOURHOOD
    per_layer = []
    for fmap in maps:
        pooled = F.avg_pool2d(fmap.float(), kernel_size=k, stride=1, padding=k // 2)
        tokens = resize_to_grid(pooled, grid, mode="bilinear").permute(0, 2, 3, 1).reshape(-1, 1, fmap.shape[1])
        per_layer.append(F.adaptive_avg_pool1d(tokens, dim))  # [B*h*w, 1, dim]
    stacked = torch.cat(per_layer, dim=-1)  # [B*h*w, 1, L*dim], layer-major
    return F.adaptive_avg_pool1d(stacked, dim).reshape(-1, grid[0], grid[1], dim)


class EqualLayerPatchCore(PatchCore):
    """PatchCore on :func:`equal_layer_embedding` (every layer weighs the same in the distance)."""

    name = "patchcore-equal"

    def embed(self, features, *, fitting: bool = False) -> torch.Tensor:
        used = self._select(features, fitting=fitting, check_grid=False)
        return equal_layer_embedding(used, self.embedding_dim)

    def _fit(self, feature_batches) -> None:
        # The package's _fit sizes the bank with embedding_width (never wider than the layers);
        # this embedding is always embedding_dim wide.
        width_rule = patchcore_module.embedding_width
        patchcore_module.embedding_width = lambda channels, dim: dim
        try:
            super()._fit(feature_batches)
        finally:
            patchcore_module.embedding_width = width_rule


def _variant(base: type, name: str, image_score: str) -> type:
    def __init__(self, extractor, **kwargs):
        kwargs.setdefault("image_score", image_score)
        base.__init__(self, extractor, **kwargs)

    return type(name.replace("-", "_"), (base,), {"name": name, "__init__": __init__})


VARIANTS = {
    "patchcore": PatchCore,
    "patchcore-mapmax": _variant(PatchCore, "patchcore-mapmax", "map_max"),
    "patchcore-equal": EqualLayerPatchCore,
    "patchcore-equal-mapmax": _variant(EqualLayerPatchCore, "patchcore-equal-mapmax", "map_max"),
}


def evaluate(model: str, data: Path, kinds: tuple[str, ...], out: Path) -> dict:
    """Mean metrics per (variant, kind), cached in ``out/results.json``."""
    cached = out / "results.json"
    if not cached.is_file():
        evaluate_model(model, str(data), layout="realiad", methods=tuple(VARIANTS), shots=8, kinds=kinds,
                       output_dir=str(out), progress=False, print_markdown=False, num_overlays=0)
    return json.loads(cached.read_text())["results"]["mean"]


def cell(values: list[dict]) -> str:
    parts = []
    for metric in METRIC_NAMES:
        numbers = [100 * v[metric] for v in values]
        if len(numbers) == 1:
            parts.append(f"{numbers[0]:.1f}")
        else:
            parts.append(f"{statistics.fmean(numbers):.1f} ± {statistics.stdev(numbers):.1f}")
    return " / ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="a Real-IAD-layout folder of the target class (squashed copy)")
    parser.add_argument("--models", required=True, nargs="+", help="trained checkpoints (one per seed)")
    parser.add_argument("--work", default="/tmp/patchcore-variants", type=Path, help="where results.json files go")
    args = parser.parse_args()
    DETECTORS.update(VARIANTS)  # the runner builds methods by registry name
    rows: dict[str, dict[str, list[dict]]] = {}
    for index, model in enumerate(args.models):
        kinds = ("pretrained",) + (BACKBONE_KINDS if index == 0 else ())
        result = evaluate(model, args.data, kinds, args.work / f"model{index}")
        for variant in VARIANTS:
            for kind in kinds:
                rows.setdefault(kind, {}).setdefault(variant, []).append(result[variant][kind])
    header = "| features | " + " | ".join(VARIANTS) + " |"
    lines = [header, "|" + " --- |" * (len(VARIANTS) + 1)]
    for kind in (*BACKBONE_KINDS, "pretrained"):
        lines.append(f"| {kind} | " + " | ".join(cell(rows[kind][v]) for v in VARIANTS) + " |")
    print("\n".join(lines))
    (args.work / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
