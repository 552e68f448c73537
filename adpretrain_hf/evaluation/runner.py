"""The Table-1 runner: every (category, method, feature kind) cell, then the report.

Per category: select and preprocess images (protocols), run each method on the backbone's
features ("w/o") once -- they do not use references -- and on the residual / pretrained
features ("w/") once per reference set; keep the first set's maps for the overlays. A
per-category :class:`~adpretrain_hf.evaluation.image_feature_cache.FeatureCache` makes that one
backbone pass per distinct image (and one projector pass per image and reference set). Then aggregate, print
the markdown table and write ``results.json`` / ``results.csv`` / ``results.md`` / overlays /
``comparison.png``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from tqdm.auto import tqdm

from ..detectors import TRAINED_METHODS
from ..extractor import REFERENCE_KINDS, ModelFeatureExtractor
from ..metrics.names import METRIC_DEFINITIONS
from .bootstrap import category_seed, draw_indices, paired_intervals, weights_from_indices
from .cell import PredictionHook, run_cell
from .config import EvaluationConfig, make_config
from .image_feature_cache import DirectSource, FeatureCache
from .identity import IDENTITY_KEY, model_identity
from .category_inputs import CategoryData, describe_model, load_splits, prepare_category
from .plots import pick_overlay_indices, save_comparison_chart, save_overlays
from .protocols import category_protocol_record, effective_shots, protocol_record
from .reference_sets import plan_references, pretrained_extractor
from .report import MEAN_ROW, aggregate, csv_rows, markdown_table, write_csv, write_json

RESULTS_JSON, RESULTS_CSV, RESULTS_MD, CHART_PNG = "results.json", "results.csv", "results.md", "comparison.png"


def evaluate_model(
    model_or_path: Any,
    config: Union[None, EvaluationConfig, str, os.PathLike] = None,
    *,
    prediction_hook: Optional[PredictionHook] = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate detectors with backbone ("w/o") vs ADPretrain ("w/") features, as in Table 1.

    Args:
        model_or_path: an ``ADPretrainModel``, or a checkpoint folder / Hub id for ``from_pretrained``.
        config: an :class:`EvaluationConfig`, or the dataset folder (``data_root``) as a shortcut.
        prediction_hook: called with every cell's :class:`~adpretrain_hf.evaluation.cell.CellPredictions`.
        **overrides: any :class:`EvaluationConfig` field, on top of ``config`` -- e.g. ``layout="mvtec"``,
            ``methods=["patchcore"]`` or ``"a,b"``, ``shots=8``, ``output_dir="eval"``, ``dtype="bf16"``,
            ``kinds="backbone,residual,pretrained"``; each field's
            ``metadata["help"]`` says what it does (``adpretrain evaluate --help`` lists them all).
            An unknown name raises ``TypeError`` with the closest field.

    Returns:
        The ``results.json`` payload: ``results`` (per category and ``"mean"``: method ->
        backbone|pretrained -> metrics in [0, 1], ``<metric>_std`` with several reference sets),
        ``config``, ``model_identity`` (config and weights hashes, checkpoint: what ``adpretrain card`` checks),
        ``intervals`` (paired bootstrap intervals of each kind - backbone over test images, see
        :mod:`.bootstrap`), ``references``, ``protocol`` and ``runs`` (every cell with timings).
    """
    return run_evaluation(model_or_path, make_config(config, **overrides), prediction_hook)


def load_model(model_or_path: Any, config: EvaluationConfig) -> tuple[Any, dict[str, Any]]:
    """The model in eval mode on ``config.device`` / ``config.dtype``, and its :func:`~.identity.model_identity`
    (taken before any dtype cast)."""
    from ..modeling import ADPretrainModel

    if isinstance(model_or_path, ADPretrainModel):
        model = model_or_path
    elif isinstance(model_or_path, (str, os.PathLike)):
        model = ADPretrainModel.from_pretrained(os.fspath(model_or_path))
    else:
        raise TypeError(
            f"model_or_path must be an ADPretrainModel or a checkpoint folder / Hub id, got {type(model_or_path).__name__}"
        )
    identity = model_identity(model, model_or_path)
    if config.device is not None or config.torch_dtype is not None:
        model.to(device=config.device, dtype=config.torch_dtype)
    return model.eval(), identity


def run_evaluation(
    model_or_path: Any, config: EvaluationConfig, prediction_hook: Optional[PredictionHook] = None, model_name: Optional[str] = None
) -> dict[str, Any]:
    """:func:`evaluate_model` on a ready :class:`EvaluationConfig`; ``model_name`` names an in-memory model in the JSON."""
    from ..modeling.image_processing_adpretrain import processor_for

    config.validate()
    if config.effective_strategy != config.reference_strategy:
        warnings.warn(f"reference_seeds={config.reference_seeds} with strategy 'first' would repeat one set: "
                      "drawing the reference sets at random instead", stacklevel=2)
    model, identity = load_model(model_or_path, config)
    processor = processor_for(model)  # the one saved with the checkpoint, else the config's
    splits = load_splits(config)
    out = Path(config.output_dir) if config.output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    protocol, references, runs, counts, cache_stats = protocol_record(config), {}, [], {}, {}
    if splits.realiad_split is not None:
        protocol["realiad_split"] = splits.realiad_split
    for category in tqdm(splits.categories, desc="categories", disable=not config.progress):
        data = prepare_category(category, splits, processor, config)
        k = effective_shots(config.shots, data.pool_pixel_values.shape[0], category)
        protocol["per_category"][category] = category_protocol_record(
            data.selection, data.train_ids, data.test_ids, data.test_labels.tolist(), k)
        counts[category] = {"num_train": data.train_pixel_values.shape[0], "num_test": data.test_pixel_values.shape[0]}
        picked = pick_overlay_indices(data.test_labels.tolist(), config.num_overlays) if out is not None else []
        source = feature_source(config)
        if isinstance(source, FeatureCache):  # only the category's own images are worth storing (not augmentations)
            source.admit(data.train_pixel_values)
            source.admit(data.test_pixel_values)
        try:
            category_runs, references[category], kept = _run_category(model, data, k, config, prediction_hook, picked, source)
        finally:
            source.close()
        cache_stats[category] = source.stats.to_json()
        runs += category_runs
        if out is not None and picked:
            _overlays(out, data, picked, kept, config, processor)

    kinds = config.feature_kinds
    results = aggregate(runs, splits.categories, config.methods, kinds)
    intervals = _intervals(runs, results, splits.categories, config)
    payload = {
        "results": results,
        **({"intervals": intervals} if intervals is not None else {}),
        "config": {**config.to_json(), "model": model_name or describe_model(model_or_path), "layout_resolved": splits.layout,
                   "model_config": {"preset": model.config.preset, "image_size": model.config.image_size,
                                    "layers": list(model.config.layers)}},
        IDENTITY_KEY: identity,
        "references": references,
        "protocol": protocol,
        "metrics": dict(METRIC_DEFINITIONS),
        "runs": [run.to_json() for run in runs],
        "feature_passes": cache_stats,
    }
    markdown = markdown_table(results, config.methods, kinds, _notes(config, splits.layout), intervals=intervals)
    if out is not None:
        write_json(out / RESULTS_JSON, payload)
        num_runs = {(r.category, r.method, r.features): 0 for r in runs}
        for r in runs:
            num_runs[(r.category, r.method, r.features)] += 1
        for method in config.methods:
            for kind in kinds:
                num_runs[(MEAN_ROW, method, kind)] = len({r.reference_seed for r in runs if (r.method, r.features) == (method, kind)})
        write_csv(out / RESULTS_CSV, csv_rows(results, counts, num_runs, intervals=intervals))
        (out / RESULTS_MD).write_text(markdown, encoding="utf-8")
        save_comparison_chart(out / CHART_PNG, results[MEAN_ROW], config.methods, kinds,
                              intervals=(intervals or {}).get("results", {}).get(MEAN_ROW),
                              title=f"{os.path.basename(os.path.normpath(config.data_root))}: mean over {len(splits.categories)} categories")
    if config.print_markdown:
        print(markdown)
    return payload


# (method, kind) -> (maps [M, H, W] and scores [M] of the overlay images, (min, max) over all test maps)
Kept = dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, tuple[float, float]]]


def feature_source(config: EvaluationConfig) -> Any:
    """The category's feature source: a :class:`FeatureCache`, or :class:`DirectSource` with the cache off."""
    if not config.feature_cache:
        return DirectSource()
    return FeatureCache(config.feature_cache_mb, config.feature_cache_dir, kinds=config.feature_kinds)


def _run_category(
    model: Any, data: CategoryData, k: int, config: EvaluationConfig, hook: Optional[PredictionHook], picked: list[int], source: Any
) -> tuple[list[Any], dict[str, Any], Kept]:
    """All cells of one category: ``(runs, references record, what the overlays need from the first set)``.

    Only the overlay images' maps are kept, so memory does not grow with the test set.
    """
    kinds, seeds = config.feature_kinds, config.seeds
    with_references = [kind for kind in kinds if kind in REFERENCE_KINDS]
    total = len(config.methods) * (("backbone" in kinds) + len(seeds) * len(with_references))
    bar = tqdm(total=total, desc=data.name, leave=False, disable=not config.progress)
    runs, kept, sets = [], {}, []
    weights = None
    if config.bootstrap_resamples > 0 and "backbone" in kinds and len(kinds) > 1:  # one resample set for all cells: paired
        indices = draw_indices(data.test_labels.tolist(), config.bootstrap_resamples, category_seed(config.bootstrap_seed, data.name))
        weights = weights_from_indices(indices, data.test_labels.shape[0])

    def cell(method: str, extractor: Any, seed: int) -> None:
        bar.set_postfix_str(f"{method} {extractor.feature_kind} seed {seed}")
        result, maps, scores = run_cell(
            data.name, method, extractor, data.train_pixel_values, data.test_pixel_values, data.test_labels,
            data.test_masks, reference_seed=seed, quick=config.quick, batch_size=config.batch_size,
            sample_ids=data.test_ids, hook=hook, bootstrap_weights=weights, protocol=config.protocol)
        runs.append(result)
        if seed == seeds[0] and picked:
            index = torch.tensor(picked)
            kept[(method, extractor.feature_kind)] = (maps[index], scores[index], (float(maps.min()), float(maps.max())))
        bar.update(1)

    try:
        if "backbone" in kinds:  # backbone features never see the references: one run
            backbone = ModelFeatureExtractor(model, feature_kind="backbone", source=source)
            for method in config.methods:
                cell(method, backbone, seeds[0])
        for seed in seeds if with_references else []:
            plan = plan_references(
                config.effective_strategy, model, data.pool_pixel_values, k, seed, pool_ids=data.pool_ids,
                pool_paths=data.pool_paths, test_pixel_values=data.test_pixel_values, test_ids=data.test_ids,
                batch_size=config.batch_size, device=config.device, aligned_feature_net=config.aligned_feature_net,
                source=source)
            sets.append(plan.record)
            for kind in with_references:
                extractor = pretrained_extractor(model, plan, data.pool_pixel_values, config.batch_size, source, kind)
                for method in config.methods:
                    cell(method, extractor, seed)
    finally:
        bar.close()
    return runs, {"strategy": config.effective_strategy, "sets": sets}, kept


def _overlays(out: Path, data: CategoryData, picked: list[int], kept: Kept, config: EvaluationConfig, processor: Any) -> None:
    index = torch.tensor(picked)
    save_overlays(
        out, data.name, data.test_pixel_values[index], data.test_masks[index], [data.test_ids[i] for i in picked],
        scores={key: s for key, (_, s, _) in kept.items()}, maps={key: m for key, (m, _, _) in kept.items()},
        ranges={key: r for key, (_, _, r) in kept.items()},
        methods=config.methods, kinds=config.feature_kinds, mean=processor.image_mean, std=processor.image_std,
    )


def _intervals(runs: list[Any], results: dict[str, Any], categories: list[str], config: EvaluationConfig) -> Optional[dict[str, Any]]:
    """The paired intervals of every kind - backbone (None without resamples or without a backbone column)."""
    if not any(run.replicates is not None for run in runs):
        return None
    return paired_intervals(runs, results, categories, config.methods, config.feature_kinds, resamples=config.bootstrap_resamples,
                            confidence=config.bootstrap_confidence, seed=config.bootstrap_seed, mean_row=MEAN_ROW)


def _notes(config: EvaluationConfig, layout: str) -> list[str]:
    """Footnotes under the table: what protocol produced these numbers."""
    notes = [f"layout {layout}; {config.shots} reference shots, strategy {config.effective_strategy}, "
             f"reference seeds {config.seeds}"]
    if config.train_shots is not None:
        notes.append(f"few-shot: {config.train_shots} normal training images per category (split seed {config.split_seed})")
    if config.train_fraction < 1.0:
        notes.append(f"sample efficiency: {config.train_fraction:g} of the normal training images (split seed {config.split_seed})")
    if config.noise_ratio > 0:
        notes.append(f"noise: int({config.noise_ratio:g} x normal training images) anomalous test images added to training "
                     "(SoftPatch overlap: also kept in test)")
    if config.quick and any(m in TRAINED_METHODS for m in config.methods):
        notes.append("quick=True: trained methods ran a few epochs only; these numbers are smoke-test numbers, not results")
    return notes
