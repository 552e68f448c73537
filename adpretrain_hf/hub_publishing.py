"""Model cards and pushing checkpoints, with huggingface_hub.

Results tables in cards come only from evaluation JSON files written by the runner
(``results[category][method][features] = {image_auroc, pixel_auroc, aupro}``): no number in a
card is typed by hand.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .metrics.names import METRIC_CARD_LABELS
from .metrics.names import METRIC_NAMES as METRICS
from .modeling.configuration_adpretrain import ADPretrainConfig
from .modeling.presets_adpretrain import PRESETS

CARD_HYPERPARAMETERS = (
    "preset", "backbone_id", "layers", "image_size", "projector_type", "num_learnable_references",
    "projector_num_heads", "mlp_ratio", "use_se_gate", "num_projector_blocks", "use_residual",
    "matching_metric", "num_reference_shots", "angle_temperature", "hypersphere_radius",
    "abnormal_margin", "loss_weight", "norm_kind", "angle_anchors", "center_mode",
)
TRAINING_RECORD_FILE = "training_record.json"  # what the run recorded, kept beside the weights for later cards
METRICS_FILE = "metrics.jsonl"  # one line per optimisation step, written by training/loop.py into its output_dir
# training arguments a card may state (paths are reduced to their last component: no local layout leaks)
RECORDED_TRAINING_ARGS = (
    "preset", "categories", "epochs", "max_steps", "batch_size", "learning_rate", "weight_decay", "lr_milestones",
    "lr_gamma", "seed", "mixed_precision", "hub_model_id",
)
TRAINING_HYPERPARAMETERS = ("epochs", "max_steps", "batch_size", "learning_rate", "weight_decay", "lr_milestones", "seed", "mixed_precision")
PLANNED_TRAINING_DATA = (
    "Not trained yet: this is the card of a planned checkpoint. The paper pretrains on Real-IAD "
    "(all classes and views, K in {1, 4, 8} same-class same-view normal references); this card will be "
    "rewritten from the training run's own record when the checkpoint exists."
)
UNRECORDED_TRAINING_DATA = (
    "Not recorded: this checkpoint was not written by `training/pretrain.py` (or its training record is missing), "
    "so the card states nothing about its training data."
)


def template_path() -> Path:
    return Path(str(resources.files("adpretrain_hf.model_cards") / "template.md"))


def load_results(files: Sequence[str | Path]) -> dict[str, Any]:
    """Merge runner ``results.json`` files: ``{category: {method: {features: metrics}}}``.

    Later files add methods/features to a category (e.g. one run per method); an entry given
    twice keeps the later file's numbers. A file that is not runner JSON raises a one-line
    ``ValueError`` naming the file.
    """
    merged: dict[str, Any] = {}
    for file in files:
        _merge_results(merged, _read_results_file(file).get("results", {}))
    return merged


def _merge_results(merged: dict[str, Any], results: dict[str, Any]) -> None:
    """Add ``{category: {method: {features: ...}}}`` into ``merged``; a later entry replaces an earlier one."""
    for category, methods in results.items():
        for method, kinds in methods.items():
            merged.setdefault(category, {}).setdefault(method, {}).update(kinds)


def load_intervals(files: Sequence[str | Path]) -> Optional[dict[str, Any]]:
    """The files' paired bootstrap intervals (``results.json``'s ``intervals``), merged like :func:`load_results`.

    The settings (``covers``, ``confidence``, ``resamples``) are the first file's; None when no file has intervals.
    """
    merged: Optional[dict[str, Any]] = None
    for file in files:
        block = _read_results_file(file)["intervals"]
        if not block:
            continue
        if merged is None:
            merged = {**block, "results": {}}
        _merge_results(merged["results"], block.get("results", {}))
    return merged


def check_results_identity(checkpoint_dir: str | Path, files: Sequence[str | Path]) -> None:
    """Refuse (``ValueError``, one line) results files not computed with this checkpoint's config and weights."""
    from .evaluation.identity import check_identity, model_identity
    from .modeling import ADPretrainModel

    recorded = [(file, _read_results_file(file)["identity"]) for file in files]  # unreadable files fail first
    if not recorded:
        return
    actual = model_identity(ADPretrainModel.from_pretrained(str(checkpoint_dir)), checkpoint_dir)
    for file, identity in recorded:
        check_identity(identity, actual, str(file))


def recorded_identity(file: str | Path) -> Optional[dict[str, Any]]:
    """The ``model_identity`` a ``results.json`` records (None in files written before identities were)."""
    return _read_results_file(file)["identity"]


def _read_results_file(file: str | Path) -> dict[str, Any]:
    """One ``results.json`` as ``{"results", "config", "intervals", "identity"}`` (a bare results dict is accepted)."""
    hint = "pass the results.json that `adpretrain evaluate --output DIR` wrote"
    try:
        loaded = json.loads(Path(file).read_text(encoding="utf-8"))
    except OSError as err:
        raise ValueError(f"cannot read results file {file}: {err.strerror or err}: {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" (line {err.lineno}, column {err.colno})" if isinstance(err, json.JSONDecodeError) else ""
        raise ValueError(f"results file {file} is not JSON{where}: {hint}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"results file {file} holds a JSON {type(loaded).__name__}, not an object: {hint}")
    results = loaded.get("results", loaded)
    shaped = isinstance(results, dict) and all(
        isinstance(methods, dict) and all(isinstance(kinds, dict) for kinds in methods.values()) for methods in results.values()
    )
    if not shaped:
        raise ValueError(f"results file {file} is not runner output ({{category: {{method: {{features: metrics}}}}}}): {hint}")
    def block(key: str) -> Any:
        return loaded.get(key) if isinstance(loaded.get(key), dict) else None

    return {"results": results, "config": block("config") or {}, "intervals": block("intervals"), "identity": block("model_identity")}


def evaluation_dataset_name(files: Sequence[str | Path]) -> str:
    """The evaluation data the runner recorded (folder name and layout), e.g. ``"mvtec_ad (mvtec layout)"``."""
    names = []
    for file in files:
        config = _read_results_file(file)["config"]
        if config.get("data_root"):
            layout = config.get("layout_resolved") or config.get("layout")
            name = Path(str(config["data_root"])).name + (f" ({layout} layout)" if layout and layout != "auto" else "")
            if name not in names:
                names.append(name)
    return ", ".join(names) or "evaluation"


def results_table(results: dict[str, Any], intervals: Optional[dict[str, Any]] = None) -> str:
    """Markdown table (w/o vs w/ per method) from a runner ``results.json`` dict.

    With ``intervals`` (``results.json``'s block) a w/ or residual cell also shows its difference to
    the backbone and the paired bootstrap interval of that difference, ``91.2 (+2.1 [-1.3, +5.4])``,
    and a line under the table says what the interval covers.
    """
    from .evaluation.report import interval_text

    mean = results.get("mean") or {}
    if not mean:
        return "No evaluation results yet: run `adpretrain evaluate ... --output DIR` and `adpretrain card --results DIR/results.json`."
    lines = ["| method | features | " + " | ".join(METRIC_CARD_LABELS[m] for m in METRICS) + " |", "| --- | --- | ---: | ---: | ---: |"]
    for method, by_kind in mean.items():
        for kind, scores in by_kind.items():
            bounds = ((intervals or {}).get("results", {}).get("mean", {}).get(method, {}).get(kind)) or {}
            cells = []
            for m in METRICS:
                text = f"{100 * scores[m]:.1f}" if scores.get(m) is not None else "–"
                entry = bounds.get(m)
                if entry and entry.get("difference") is not None:
                    text += f" ({100 * entry['difference']:+.1f}{interval_text(entry)})"
                cells.append(text)
            lines.append(f"| {method} | {kind} | {' | '.join(cells)} |")
    if intervals:
        lines += ["", f"In parentheses: the difference to the backbone's own features and its paired bootstrap "
                      f"{100 * intervals['confidence']:g}% interval ({intervals['resamples']} resamples). "
                      f"The interval covers {intervals['covers']}. An interval that contains 0 does not resolve the sign."]
    return "\n".join(lines)


def _eval_results(results: dict[str, Any], dataset_name: str) -> list[EvalResult]:
    out = []
    for method, by_kind in (results.get("mean") or {}).items():
        scores = by_kind.get("pretrained") or {}
        for metric in METRICS:
            if scores.get(metric) is not None:
                out.append(
                    EvalResult(
                        task_type="image-segmentation", task_name="anomaly detection", dataset_type=dataset_name.lower(),
                        dataset_name=dataset_name, metric_type=metric, metric_name=f"{method} {METRIC_CARD_LABELS[metric]}",
                        metric_value=round(float(scores[metric]), 4),
                    )
                )
    return out


# -- what the training run recorded ----------------------------------------------------------------
def _looks_like_hub_id(value: Any) -> bool:
    """``owner/name`` and not a local folder: only such ids may go into ``base_model``."""
    if not isinstance(value, str) or value.count("/") != 1 or Path(value).exists():
        return False
    owner, name = value.split("/")
    return bool(owner) and bool(name) and not value.startswith((".", "~"))


def _describe_weights(weights: Any) -> Optional[str]:
    """A backbone-weights source for the record: None (random), "auto", a Hub id or package/tag name as is,
    a local folder by its name only (no local layout leaks)."""
    if not weights:
        return None
    if weights != "auto" and not _looks_like_hub_id(weights) and Path(str(weights)).exists():
        return f"local folder {Path(str(weights)).name}"
    return str(weights)


def training_record(
    training_args: dict[str, Any], checkpoint_dir: Optional[str | Path] = None, metrics_file: Optional[str | Path] = None,
) -> dict[str, Any]:
    """The card-relevant part of a run's arguments (plus the categories its data folder held).

    ``data_root`` and a local ``backbone_weights`` folder are reduced to their names; the
    number of optimisation steps comes from ``metrics_file`` (default ``checkpoint_dir/metrics.jsonl``;
    training writes it beside the model folder, not in it) when that file exists.
    """
    record = {key: training_args.get(key) for key in RECORDED_TRAINING_ARGS if training_args.get(key) is not None}
    data_root = training_args.get("data_root")
    if data_root:
        record["data_folder"] = Path(str(data_root)).name
        if not training_args.get("categories") and Path(str(data_root)).is_dir():
            record["categories_found"] = sorted(p.name for p in Path(str(data_root)).iterdir() if p.is_dir())
    record["backbone_weights"] = _describe_weights(training_args.get("backbone_weights"))
    metrics = Path(metrics_file) if metrics_file is not None else Path(checkpoint_dir) / METRICS_FILE if checkpoint_dir is not None else None
    if metrics is not None and metrics.is_file():
        record["steps_run"] = sum(1 for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip())
    return record


def describe_training_data(record: Optional[dict[str, Any]]) -> str:
    """The card's "Training data" paragraph, from a :func:`training_record` only."""
    if not record:
        return UNRECORDED_TRAINING_DATA
    if not record.get("data_folder"):
        return "Not recorded: the training run's record names no data folder."
    categories = record.get("categories")
    if categories:
        which = f"categories {', '.join(map(str, categories))}"
    elif record.get("categories_found"):
        which = f"all categories found there ({', '.join(record['categories_found'])})"
    else:
        which = "all categories found there"
    text = f"Pretrained with `training/pretrain.py` on the Real-IAD-layout folder `{record['data_folder']}`, {which}."
    if record.get("steps_run") is not None:
        text += f" Optimisation steps run: {record['steps_run']}."
    weights = record.get("backbone_weights")
    text += (
        " The frozen backbone had randomly initialised weights (no pretrained backbone weights were loaded)."
        if not weights else f" Backbone weights: `{weights}`."
    )
    return text


def card_base_model(config: ADPretrainConfig, record: Optional[dict[str, Any]], planned: bool = False) -> Optional[str]:
    """The Hub id of the backbone weights the run loaded, else None (never a guess)."""
    if planned or not config.bundle_backbone:  # a planned card states the plan; an unbundled one loads backbone_id
        return config.backbone_id if _looks_like_hub_id(config.backbone_id) else None
    weights = (record or {}).get("backbone_weights")
    candidate = config.backbone_id if weights == "auto" else weights
    return candidate if _looks_like_hub_id(candidate) else None


def build_model_card(
    config: ADPretrainConfig,
    repo_id: str,
    results: Optional[dict[str, Any]] = None,
    dataset_name: str = "evaluation",
    training_record: Optional[dict[str, Any]] = None,
    planned: bool = False,
    datasets: Sequence[str] = (),
    intervals: Optional[dict[str, Any]] = None,
) -> ModelCard:
    """A ``ModelCard`` stating only what is known: the config, the run's record, runner results.

    ``datasets`` (Hub dataset ids of the training data) is metadata only a caller can vouch
    for: nothing is inferred. No ``pipeline_tag``: the Hub's tasks (image-feature-extraction, ...)
    cannot load this model; the package's tasks are ``anomaly-features`` / ``anomaly-detection``.
    """
    results = results or {}
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        base_model=card_base_model(config, training_record, planned),
        tags=["anomaly-detection", "adpretrain", "industrial-inspection", config.backbone_family],
        datasets=list(datasets) or None,
        model_name=repo_id,
        eval_results=_eval_results(results, dataset_name) or None,
    )
    hyper = [(k, getattr(config, k, None)) for k in CARD_HYPERPARAMETERS]
    if training_record:
        hyper += [(f"train.{k}", training_record[k]) for k in TRAINING_HYPERPARAMETERS if training_record.get(k) is not None]
    preset = PRESETS.get(config.preset or "")
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=repo_id,
        repo_id=repo_id,
        backbone_description=preset.description if preset else (config.backbone_id or config.backbone_family),
        shots=config.num_reference_shots,
        training_data=PLANNED_TRAINING_DATA if planned else describe_training_data(training_record),
        hyperparameters=hyper,
        results_table=results_table(results, intervals),
    )


def write_model_card(
    checkpoint_dir: str | Path,
    repo_id: Optional[str] = None,
    results_files: Sequence[str | Path] = (),
    training_args: Optional[dict[str, Any]] = None,
    dataset_name: Optional[str] = None,
    datasets: Sequence[str] = (),
    metrics_file: Optional[str | Path] = None,
) -> Path:
    """Write ``README.md`` into a checkpoint folder from what was recorded.

    ``training_args`` (given at the end of training) are reduced to a record saved as
    ``training_record.json``, so a later ``adpretrain card --checkpoint`` (adding results)
    states the same training facts; ``metrics_file`` is the run's step log (see
    :func:`training_record`). ``results_files`` must record this checkpoint's identity
    (:func:`check_results_identity`: the card never shows another model's numbers). The repo id is ``repo_id``, else the run's ``hub_model_id``,
    else the folder's name (a local checkpoint has no Hub id).
    """
    checkpoint_dir = Path(checkpoint_dir)
    config = ADPretrainConfig.from_pretrained(checkpoint_dir)
    record_file = checkpoint_dir / TRAINING_RECORD_FILE
    record = None
    if training_args is not None:
        record = training_record(training_args, checkpoint_dir, metrics_file=metrics_file)
        record_file.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    elif record_file.is_file():
        record = json.loads(record_file.read_text(encoding="utf-8"))
    check_results_identity(checkpoint_dir, results_files)
    results = load_results(results_files)
    name = repo_id or (record or {}).get("hub_model_id") or checkpoint_dir.resolve().name
    dataset_name = dataset_name or evaluation_dataset_name(results_files)
    card = build_model_card(config, name, results, dataset_name=dataset_name, training_record=record, datasets=datasets,
                            intervals=load_intervals(results_files))
    path = checkpoint_dir / "README.md"
    card.save(path)
    return path


def push_checkpoint(checkpoint_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a checkpoint folder (weights, config, code, card; not checkpoints/ or logs/) to the Hub."""
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(checkpoint_dir), ignore_patterns=["checkpoints/*", "logs/*", "*.jsonl"],
        commit_message="Upload ADPretrain checkpoint",
    )
    return str(info)
