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

from .modeling.configuration_adpretrain import ADPretrainConfig
from .modeling.presets_adpretrain import PRESETS

METRICS = ("image_auroc", "pixel_auroc", "aupro")
METRIC_NAMES = {"image_auroc": "I-AUROC", "pixel_auroc": "P-AUROC", "aupro": "AUPRO (FPR<=0.3)"}
CARD_HYPERPARAMETERS = (
    "preset", "backbone_id", "layers", "image_size", "projector_type", "num_learnable_references",
    "projector_num_heads", "mlp_ratio", "use_se_gate", "num_projector_blocks", "use_residual",
    "matching_metric", "num_reference_shots", "angle_temperature", "hypersphere_radius",
    "abnormal_margin", "loss_weight", "norm_kind", "angle_anchors", "center_mode",
)
DEFAULT_TRAINING_DATA = (
    "Real-IAD (30 industrial product classes, 5 camera views, pixel masks), all classes and views, "
    "two photometrically augmented views per image, K in {1, 4, 8} same-class same-view normal references."
)


def template_path() -> Path:
    return Path(str(resources.files("adpretrain_hf.model_cards") / "template.md"))


def load_results(files: Sequence[str | Path]) -> dict[str, Any]:
    """Merge runner ``results.json`` files: ``{category: {method: {features: metrics}}}``.

    Later files add methods/features to a category (e.g. one run per method); an entry given
    twice keeps the later file's numbers.
    """
    merged: dict[str, Any] = {}
    for file in files:
        loaded = json.loads(Path(file).read_text())
        for category, methods in loaded.get("results", loaded).items():
            for method, kinds in methods.items():
                merged.setdefault(category, {}).setdefault(method, {}).update(kinds)
    return merged


def results_table(results: dict[str, Any]) -> str:
    """Markdown table (w/o vs w/ per method) from a runner ``results.json`` dict."""
    mean = results.get("mean") or {}
    if not mean:
        return "No evaluation results yet: run `adpretrain evaluate ... --output DIR` and `adpretrain card --results DIR/results.json`."
    lines = ["| method | features | " + " | ".join(METRIC_NAMES[m] for m in METRICS) + " |", "| --- | --- | ---: | ---: | ---: |"]
    for method, by_kind in mean.items():
        for kind, scores in by_kind.items():
            cells = " | ".join(f"{100 * scores[m]:.1f}" if scores.get(m) is not None else "–" for m in METRICS)
            lines.append(f"| {method} | {kind} | {cells} |")
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
                        dataset_name=dataset_name, metric_type=metric, metric_name=f"{method} {METRIC_NAMES[metric]}",
                        metric_value=round(float(scores[metric]), 4),
                    )
                )
    return out


def build_model_card(
    config: ADPretrainConfig,
    repo_id: str,
    results: Optional[dict[str, Any]] = None,
    dataset_name: str = "evaluation",
    training_data: str = DEFAULT_TRAINING_DATA,
    training_args: Optional[dict[str, Any]] = None,
) -> ModelCard:
    """A ``ModelCard`` from the config (and, when given, runner results and training arguments)."""
    results = results or {}
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        tags=["anomaly-detection", "adpretrain", "industrial-inspection", config.backbone_family],
        datasets=["Real-IAD"],
        model_name=repo_id,
        eval_results=_eval_results(results, dataset_name) or None,
    )
    hyper = [(k, getattr(config, k, None)) for k in CARD_HYPERPARAMETERS]
    if training_args:
        hyper += [(f"train.{k}", v) for k, v in training_args.items() if k in ("epochs", "batch_size", "learning_rate", "weight_decay", "lr_milestones", "seed", "mixed_precision")]
    preset = PRESETS.get(config.preset or "")
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=repo_id,
        repo_id=repo_id,
        backbone_description=preset.description if preset else (config.backbone_id or config.backbone_family),
        shots=config.num_reference_shots,
        training_data=training_data,
        hyperparameters=hyper,
        results_table=results_table(results),
    )


def write_model_card(
    checkpoint_dir: str | Path,
    repo_id: Optional[str] = None,
    results_files: Sequence[str | Path] = (),
    training_args: Optional[dict[str, Any]] = None,
) -> Path:
    """Write ``README.md`` into a checkpoint folder; results come only from runner JSON files."""
    checkpoint_dir = Path(checkpoint_dir)
    config = ADPretrainConfig.from_pretrained(checkpoint_dir)
    results = load_results(results_files)
    card = build_model_card(config, repo_id or f"adpretrain/{config.preset or checkpoint_dir.name}", results, training_args=training_args)
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
