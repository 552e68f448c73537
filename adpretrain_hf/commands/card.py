"""``adpretrain card``: write a model card (README.md) for a checkpoint or a planned preset.

The results table is filled only from evaluation JSON files written by ``adpretrain evaluate``, and
only from those that record this model's identity (config and weights hashes; for ``--preset``, the preset).
"""

from __future__ import annotations

import argparse

HELP = "write a Hub model card for a checkpoint (or a planned preset), results only from evaluation JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a save_pretrained folder; the card is written into it as README.md")
    source.add_argument("--preset", help="a preset name, for a planned checkpoint's card (needs --output)")
    parser.add_argument("--results", action="append", default=[], help="results.json from `adpretrain evaluate` of this very checkpoint (its recorded config and weights hashes are checked; repeatable)")
    parser.add_argument("--repo-id", default=None, help="Hub repo id shown in the card (default: the run's --hub-model-id, else the folder name; adpretrain/<preset> for --preset)")
    parser.add_argument("--dataset-name", default=None, help="name of the evaluation dataset in the model-index (default: the data folder the results JSON records)")
    parser.add_argument("--training-dataset", action="append", default=[], help="Hub dataset id of the training data, for the card's datasets: metadata (repeatable; never inferred)")
    parser.add_argument("--output", default=None, help="where to write the card (default: <checkpoint>/README.md)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.hub_publishing import build_model_card, evaluation_dataset_name, load_intervals, load_results, write_model_card
    from adpretrain_hf.modeling import ADPretrainConfig

    for path in args.results:
        if not Path(path).is_file():
            raise CommandError(f"results file {path} does not exist", "write one with: adpretrain evaluate ... --output DIR")
    if args.checkpoint:
        if not (Path(args.checkpoint) / "config.json").is_file():
            raise CommandError(f"{args.checkpoint} is not a checkpoint folder (no config.json)", "point --checkpoint at a save_pretrained folder")
        path = write_model_card(
            args.checkpoint, repo_id=args.repo_id, results_files=args.results, dataset_name=args.dataset_name, datasets=args.training_dataset
        )
        if args.output:
            Path(args.output).write_text(path.read_text())
            path = Path(args.output)
    else:
        if not args.output:
            raise CommandError("--preset needs --output", "e.g. --output model_cards/clip-large.md")
        _check_planned_results(args.preset, args.results)
        results = load_results(args.results)
        try:
            config = ADPretrainConfig.from_preset(args.preset)
        except ValueError as err:
            raise CommandError(str(err), "see the preset list in the error") from None
        dataset_name = args.dataset_name or evaluation_dataset_name(args.results)
        card = build_model_card(
            config, args.repo_id or f"adpretrain/{args.preset}", results, dataset_name=dataset_name, planned=True, datasets=args.training_dataset,
            intervals=load_intervals(args.results),
        )
        card.save(args.output)
        path = Path(args.output)
    print(f"model card written to {path}")
    return 0


def _check_planned_results(preset: str, files: list) -> None:
    """A planned card may show results only of a model of that preset (recorded in results.json)."""
    from adpretrain_hf.cli import CommandError
    from adpretrain_hf.hub_publishing import recorded_identity

    for file in files:
        recorded = (recorded_identity(file) or {}).get("preset")
        if recorded != preset:
            raise CommandError(f"results file {file} records {'preset ' + repr(recorded) if recorded else 'no model identity'}, "
                               f"not a model of preset {preset!r}", "pass results that `adpretrain evaluate` wrote for a model of this preset")
