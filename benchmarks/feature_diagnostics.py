"""Where do memory-bank detectors lose information? Per-layer patch diagnostics of three feature kinds.

For one ADPretrain checkpoint (or a preset: ``--backbone-weights auto`` loads the preset's
real backbone, the projector stays untrained) and a Real-IAD- or MVTec-layout folder,
per category, per tapped layer and per feature kind

- ``backbone``: the frozen backbone's patch tokens (``output.backbone_features``),
- ``residual``: tokens minus their nearest reference token (``output.residuals``), the
  reference bank being the first ``--shots`` (8) normal training images, passed explicitly
  as ``reference_features=`` (the model's own state is never changed),
- ``projected``: ADPretrain's projected residuals (``output.features``),

it measures on the test images' patches (labels from the masks: *anomalous* = more than
``PATCH_ANOMALY_FRACTION`` of the patch masked, *normal* = nothing masked, the rest ignored):

- ``norm AUROC``: patch-level AUROC of the feature's L2 norm (FeatureNorm's score);
- ``NN AUROC``: patch-level AUROC of the exact L2 distance to the nearest patch of a
  memory bank holding every training normal patch (PatchCore without coreset or pooling;
  ``--local-context`` first applies PatchCore's 3x3 average);
- the mean / std of the normal patches' NN distance and norm, and the anomalous mean.

The reference images are normal training images too. As in the runner (strategy "first"),
the memory bank includes them by default, yet their residuals are exactly zero (each patch's
nearest reference is itself), so they add a degenerate cluster to the residual/projected
banks; ``--bank-references exclude`` leaves them out to measure what that costs.

The split and protocol are the evaluation runner's (``adpretrain_hf.evaluation``): the same
Real-IAD fit/test split and training subsets as ``adpretrain evaluate``. Prints one
markdown table (rows layer x kind, mean over categories) and writes a JSON with every
category's numbers.

    python benchmarks/feature_diagnostics.py --model out/clip-large --data /data/mvtec_ad --categories bottle
    python benchmarks/feature_diagnostics.py --preset clip-large --backbone-weights auto --data /data/realiad_256
    python benchmarks/feature_diagnostics.py --preset tiny-cnn --data /tmp/synthetic --device cpu   # smoke

Memory: the bank holds ``N_train * P_l * C_l`` float32 values per layer and kind on the CPU
(CLIP-L at 224: 1 MiB per image per layer and kind); ``--max-train`` caps the images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from adpretrain_hf.commands._deploy_io import resolve_device
from adpretrain_hf.modeling.scoring_adpretrain import PATCHCORE_NEIGHBOURHOOD  # --local-context averages like PatchCore

KINDS = {"backbone": "backbone_features", "residual": "residuals", "projected": "features"}  # kind -> output field
IGNORED, NORMAL, ANOMALOUS = -1, 0, 1  # patch targets
STATS = ("norm_auroc", "nn_auroc", "nn_normal_mean", "nn_normal_std", "nn_anomalous_mean",
         "norm_normal_mean", "norm_normal_std", "norm_anomalous_mean")


def load_model(args: argparse.Namespace, device: torch.device) -> Any:
    """A checkpoint (``--model``) or a preset (``--preset``), in eval mode on ``device``."""
    from adpretrain_hf.modeling import PRESETS, ADPretrainConfig, ADPretrainModel

    if args.model is not None:
        model = ADPretrainModel.from_pretrained(args.model)
    else:
        if args.preset not in PRESETS:
            raise SystemExit(f"unknown preset {args.preset!r}: choose one of {', '.join(sorted(PRESETS))}")
        torch.manual_seed(args.seed)  # the same untrained projector on every run
        model = ADPretrainModel(ADPretrainConfig.from_preset(args.preset))
    weights = args.backbone_weights
    if weights == "auto" and args.model is None:
        if model.config.backbone_id:
            model.load_backbone_weights()
        else:
            print(f"preset {args.preset!r} names no backbone weights: its backbone stays random (smoke runs only)")
    elif weights not in (None, "auto", "none"):
        model.load_backbone_weights(weights)
    return model.to(device).eval()


def tokens_with_context(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """``[B, h*w, C]`` -> the same after PatchCore's 3x3 average (zero padding counted)."""
    b, _, c = tokens.shape
    fmap = tokens.transpose(1, 2).reshape(b, c, grid[0], grid[1])
    fmap = F.avg_pool2d(fmap, PATCHCORE_NEIGHBOURHOOD, stride=1, padding=PATCHCORE_NEIGHBOURHOOD // 2)
    return fmap.flatten(2).transpose(1, 2)


@torch.no_grad()
def extract(model: Any, pixel_values: torch.Tensor, bank: list[torch.Tensor], args: argparse.Namespace,
            device: torch.device, desc: str) -> tuple[dict[str, list[torch.Tensor]], list[tuple[int, int]]]:
    """Per kind, per layer ``[N, P_l, C_l]`` float32 on the CPU; and the grids ``[(h_l, w_l)]``."""
    out: dict[str, list[list[torch.Tensor]]] = {kind: [] for kind in KINDS}
    grids: list[tuple[int, int]] = []
    dtype = next(model.parameters()).dtype
    for start in tqdm(range(0, pixel_values.shape[0], args.batch_size), desc=desc, leave=False, disable=args.no_progress):
        batch = pixel_values[start : start + args.batch_size].to(device=device, dtype=dtype)
        output = model(batch, reference_features=bank, output_anomaly_map=False)
        grids = [tuple(int(v) for v in g) for g in output.grid_sizes]
        for kind, field in KINDS.items():
            layers = [t.float() for t in getattr(output, field)]
            if args.local_context:
                layers = [tokens_with_context(t, g) for t, g in zip(layers, grids)]
            out[kind].append([t.cpu() for t in layers])
    return {kind: [torch.cat([b[l] for b in batches]) for l in range(len(grids))] for kind, batches in out.items()}, grids


def patch_targets(masks: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Masks ``[N, H, W]`` -> ``[N * h * w]`` targets: 1 anomalous, 0 untouched normal, -1 ignored."""
    from adpretrain_hf.data import PATCH_ANOMALY_FRACTION, patch_fractions

    fractions = patch_fractions(masks.float(), tuple(grid)).flatten()  # [N * h * w], row-major like the tokens
    targets = torch.full_like(fractions, IGNORED, dtype=torch.long)
    targets[fractions == 0] = NORMAL
    targets[fractions > PATCH_ANOMALY_FRACTION] = ANOMALOUS
    return targets


def nn_distances(queries: torch.Tensor, bank: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Exact L2 distance of each query ``[n, C]`` to its nearest bank row ``[M, C]`` -> ``[n]`` (CPU)."""
    from adpretrain_hf.modeling.matching_adpretrain import nearest_neighbors

    squared, _ = nearest_neighbors(queries.to(device), bank.to(device), metric="l2", backend="auto")
    return squared.clamp_min(0.0).sqrt().cpu()


def auroc(scores: torch.Tensor, targets: torch.Tensor) -> Optional[float]:
    """AUROC of ``scores`` for targets in {0, 1}; None when a class is missing."""
    from adpretrain_hf.metrics import image_auroc

    if not (targets == NORMAL).any() or not (targets == ANOMALOUS).any():
        return None
    return image_auroc(scores.double().numpy(), targets.numpy())


def _moments(values: torch.Tensor) -> tuple[Optional[float], Optional[float]]:
    if values.numel() == 0:
        return None, None
    return float(values.double().mean()), float(values.double().std(unbiased=False))


def layer_stats(train: torch.Tensor, test: torch.Tensor, targets: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """One layer and kind: ``train [N_tr, P, C]`` (the memory bank), ``test [N_te, P, C]``, ``targets [N_te * P]``."""
    queries = test.reshape(-1, test.shape[-1])
    keep = targets != IGNORED
    queries, labels = queries[keep], targets[keep]
    norms = queries.norm(dim=1)
    nn = nn_distances(queries, train.reshape(-1, train.shape[-1]), device)
    normal, anomalous = labels == NORMAL, labels == ANOMALOUS
    nn_mean, nn_std = _moments(nn[normal])
    norm_mean, norm_std = _moments(norms[normal])
    return {
        "norm_auroc": auroc(norms, labels), "nn_auroc": auroc(nn, labels),
        "nn_normal_mean": nn_mean, "nn_normal_std": nn_std, "nn_anomalous_mean": _moments(nn[anomalous])[0],
        "norm_normal_mean": norm_mean, "norm_normal_std": norm_std, "norm_anomalous_mean": _moments(norms[anomalous])[0],
        "num_normal_patches": int(normal.sum()), "num_anomalous_patches": int(anomalous.sum()), "channels": int(test.shape[-1]),
    }


def diagnose_category(model: Any, data: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """All layers and kinds of one prepared category (``evaluation.category_inputs.CategoryData``)."""
    pool = data.pool_pixel_values
    references = pool[: args.shots]
    train_images = pool
    if args.bank_references == "exclude":
        if pool.shape[0] > references.shape[0]:
            train_images = pool[references.shape[0] :]
        else:
            print(f"{data.name}: all {pool.shape[0]} normal images are references: the bank keeps them")
    if args.max_train is not None:
        train_images = train_images[: args.max_train]
    test_images, masks = data.test_pixel_values, data.test_masks
    if args.max_test is not None:
        test_images, masks = test_images[: args.max_test], masks[: args.max_test]
    dtype = next(model.parameters()).dtype
    bank = model.compute_reference_bank(references.to(device=device, dtype=dtype))  # per layer [K*N_l, C_l]
    train, grids = extract(model, train_images, bank, args, device, f"{data.name}: train")
    test, _ = extract(model, test_images, bank, args, device, f"{data.name}: test")
    rows = {}
    for layer, grid in enumerate(grids):
        targets = patch_targets(masks, grid)
        for kind in KINDS:
            rows[f"{layer}/{kind}"] = {"layer": layer, "kind": kind, "grid": list(grid),
                                       **layer_stats(train[kind][layer], test[kind][layer], targets, device)}
    return {"num_train_images": int(train_images.shape[0]), "num_test_images": int(test_images.shape[0]),
            "num_references": int(references.shape[0]), "rows": rows}


def mean_rows(per_category: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean of every statistic over the categories where it is defined."""
    keys = list(next(iter(per_category.values()))["rows"])
    out = {}
    for key in keys:
        rows = [cat["rows"][key] for cat in per_category.values()]
        mean = {"layer": rows[0]["layer"], "kind": rows[0]["kind"], "channels": rows[0]["channels"]}
        for stat in STATS:
            values = [r[stat] for r in rows if r[stat] is not None]
            mean[stat] = sum(values) / len(values) if values else None
        out[key] = mean
    return out


def markdown_table(rows: dict[str, dict[str, Any]], layers: Sequence[int]) -> str:
    """One row per layer x kind; AUROCs in %, distances and norms as numbers."""
    def fmt(value: Optional[float], pct: bool = False) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{100 * value:.1f}" if pct else f"{value:.4g}"

    lines = ["| layer | kind | C | norm AUROC | NN AUROC | NN normal mean ± std | NN anomalous mean "
             "| norm normal mean ± std | norm anomalous mean |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows.values():
        lines.append(
            f"| {layers[row['layer']]} | {row['kind']} | {row['channels']} | {fmt(row['norm_auroc'], True)} "
            f"| {fmt(row['nn_auroc'], True)} | {fmt(row['nn_normal_mean'])} ± {fmt(row['nn_normal_std'])} "
            f"| {fmt(row['nn_anomalous_mean'])} | {fmt(row['norm_normal_mean'])} ± {fmt(row['norm_normal_std'])} "
            f"| {fmt(row['norm_anomalous_mean'])} |"
        )
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="DIR_OR_ID", help="ADPretrain checkpoint folder (or Hub id)")
    source.add_argument("--preset", metavar="NAME", help="a preset with an untrained projector, e.g. clip-large")
    parser.add_argument("--backbone-weights", default="auto", metavar="auto|none|ID_OR_DIR",
                        help="with --preset, 'auto' loads the preset's backbone weights; 'none' keeps it random; "
                        "or a weights id / folder (default: auto)")
    parser.add_argument("--data", required=True, metavar="ROOT", help="Real-IAD- or MVTec-layout folder")
    parser.add_argument("--layout", default="auto", help="dataset layout (default: auto-detect)")
    parser.add_argument("--categories", default=None, metavar="A,B", help="comma-separated categories (default: all)")
    parser.add_argument("--shots", type=int, default=8, help="normal reference images for the residuals (default: 8)")
    parser.add_argument("--max-train", type=int, default=None, metavar="N", help="memory bank from at most N normal images")
    parser.add_argument("--max-test", type=int, default=None, metavar="N", help="at most N test images per category")
    parser.add_argument("--bank-references", choices=("include", "exclude"), default="include",
                        help="whether the reference images' patches are in the memory bank (default: include, as the runner)")
    parser.add_argument("--local-context", action="store_true", help="PatchCore's 3x3 average before norms and NN")
    parser.add_argument("--realiad-fit-fraction", type=float, default=0.5, help="Real-IAD: share of OK samples fitted on")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the Real-IAD split")
    parser.add_argument("--seed", type=int, default=0, help="seeds the untrained projector of --preset")
    parser.add_argument("--device", type=resolve_device, default="auto", help="'auto' (cuda when visible), 'cpu', 'cuda:0', ...")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--output", default="feature_diagnostics.json", metavar="JSON", help="where to write the JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for name in ("shots", "max_train", "max_test", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    from adpretrain_hf.evaluation import EvaluationConfig
    from adpretrain_hf.evaluation.category_inputs import load_splits, prepare_category
    from adpretrain_hf.modeling.image_processing_adpretrain import processor_for

    args = parse_args(argv)
    if not os.path.isdir(args.data):
        raise SystemExit(f"data folder {args.data} does not exist: pass the folder holding the categories")
    device = torch.device(args.device)
    model = load_model(args, device)
    processor = processor_for(model)
    config = EvaluationConfig(data_root=args.data, layout=args.layout, categories=args.categories, shots=args.shots,
                              realiad_fit_fraction=args.realiad_fit_fraction, split_seed=args.split_seed,
                              batch_size=args.batch_size, progress=not args.no_progress, print_markdown=False)
    config.validate()
    splits = load_splits(config)
    per_category = {}
    for category in tqdm(splits.categories, desc="categories", disable=args.no_progress):
        data = prepare_category(category, splits, processor, config)
        per_category[category] = diagnose_category(model, data, args, device)
    layers = list(model.config.layers)
    mean = mean_rows(per_category)
    table = markdown_table(mean, layers)
    print(f"{args.model or args.preset} on {args.data} ({splits.layout}; {len(per_category)} categories; "
          f"mean over categories; bank {args.bank_references}s references; "
          f"{'3x3 local context; ' if args.local_context else ''}AUROCs in %)\n")
    print(table)
    payload = {"model": args.model or args.preset, "backbone_weights": args.backbone_weights, "data": args.data,
               "layout": splits.layout, "tapped_layers": layers, "local_context": args.local_context,
               "bank_references": args.bank_references, "shots": args.shots, "device": str(device), "mean": mean, "per_category": per_category}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    print(f"\nwrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
