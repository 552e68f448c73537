"""Pretrain ADPretrain Feature Projectors on a Real-IAD-layout dataset.

    python training/pretrain.py --config training/configs/clip-large.yaml --data-root /data/Real-IAD
    accelerate launch training/pretrain.py --config training/configs/clip-large.yaml --data-root /data/Real-IAD
    accelerate launch --multi_gpu --num_processes 8 training/pretrain.py --config ... --data-root ...

Any argument can also be set with ``--set key=value`` (``--set model.loss_weight=2`` for
ADPretrainConfig fields). The trained model is ``<output_dir>/model``, a ``save_pretrained``
checkpoint (with a model card) that ``AutoModel.from_pretrained`` and
``pipeline("anomaly-features")`` load; training state lives in ``<output_dir>/checkpoints``
(``--resume latest``; safetensors + JSON, no pickle), tracker logs in ``<output_dir>/logs``,
per-step numbers in ``<output_dir>/metrics.jsonl``. Errors in the arguments print one line
and exit with status 2 (``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

EXIT_USAGE = 2  # argparse's status for bad arguments; used for every user error
EXIT_INTERRUPTED = 130
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError)

from adpretrain_hf.training.arguments import load_arguments

# Flags mirrored 1:1 onto PretrainArguments fields (None = keep the config's value).
_FLAGS = {
    "--data-root": dict(type=str, help="Real-IAD root folder (<class>/OK, <class>/NG)"),
    "--output-dir": dict(type=str, help="where the checkpoint, logs and metrics go"),
    "--preset": dict(type=str, help="model preset, e.g. clip-large, dinov2-base, tiny-clip"),
    "--backbone-weights": dict(type=str, help="'auto' (the preset's backbone id) or an id / local folder"),
    "--epochs": dict(type=int), "--batch-size": dict(type=int), "--learning-rate": dict(type=float),
    "--seed": dict(type=int), "--max-steps": dict(type=int, help="stop after this many optimizer steps"),
    "--gradient-accumulation-steps": dict(type=int), "--num-workers": dict(type=int),
    "--mixed-precision": dict(type=str, choices=["auto", "no", "bf16", "fp16"]),
    "--checkpoint-every-steps": dict(type=int, help="save an Accelerate checkpoint every N steps (default: every epoch)"),
    "--resume": dict(type=str, help="'latest' or a checkpoint folder to continue from"),
    "--hub-model-id": dict(type=str, help="repo id for --push-to-hub"),
    "--report-to": dict(type=str, help="tracker(s) for the logs: tensorboard (default), wandb, ..., all, or none"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=str, help="YAML file of pretraining arguments (training/configs/<preset>.yaml)")
    for flag, kwargs in _FLAGS.items():
        parser.add_argument(flag, default=None, **kwargs)
    parser.add_argument("--categories", type=str, default=None, help="comma-separated classes (default: all)")
    parser.add_argument("--push-to-hub", action="store_true", default=None, help="upload the result to the Hub")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any argument (model.<field> for the model config)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse, train, and turn user errors into one line on stderr with exit status 2."""
    parsed = build_parser().parse_args(argv)
    try:
        _train(parsed)
    except KeyboardInterrupt:
        print("pretrain.py: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as err:
        if parsed.debug:
            raise
        print(f"pretrain.py: error: {err} (--debug for the traceback)", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _train(parsed: argparse.Namespace) -> None:
    values = {flag.lstrip("-").replace("-", "_"): getattr(parsed, flag.lstrip("-").replace("-", "_")) for flag in _FLAGS}
    values["categories"] = parsed.categories.split(",") if parsed.categories else None
    values["push_to_hub"] = parsed.push_to_hub
    if parsed.no_progress:
        values["progress"] = False
    args = load_arguments(parsed.config, values, parsed.set).validate()  # before the heavy imports

    from adpretrain_hf.training.loop import run_pretraining

    run_pretraining(args)  # prints "checkpoint written: <output_dir>/model" on the main process


if __name__ == "__main__":
    sys.exit(main())
