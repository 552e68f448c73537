"""``adpretrain app``: serve a fitted detector folder as a local inspection page (Gradio).

Drop or pick an image to see the anomaly-map overlay, its score and label under a threshold
slider; score a folder into a table with a CSV download. Needs the ``app`` extra
(``pip install 'adpretrain-hf[app]'``); works offline and binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import argparse

from adpretrain_hf.app import DEFAULT_HOST, DEFAULT_PORT  # the page's defaults (the module imports gradio lazily)
from adpretrain_hf.commands._deploy_io import RUNTIMES, device_name

HELP = "serve a fitted detector folder as a local inspection page (Gradio): overlay, score, label, threshold slider, folder -> CSV"
APP_EXTRA_HINT = "install the page's extra: pip install 'adpretrain-hf[app]'"


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1-65535")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", required=True, help="folder written by `adpretrain fit` (or a Hub id)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 exposes the page to the network)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT})")
    parser.add_argument("--threshold", type=float, default=None, help="initial image threshold on the raw score (default: the detector's calibrated one)")
    parser.add_argument("--device", type=device_name, default="auto", help="auto (CUDA when present), cpu, cuda:0, ...")
    parser.add_argument("--runtime", default="torch", choices=RUNTIMES,
                        help="score with torch (default), or with the graph `adpretrain export --format onnx|openvino` wrote into the detector folder (CPU)")


def run(args: argparse.Namespace) -> int:
    import importlib.util
    from pathlib import Path

    from adpretrain_hf.cli import CommandError

    detector = Path(args.detector)
    looks_local = detector.is_absolute() or args.detector.startswith(".") or detector.exists() or args.detector.count("/") != 1
    if looks_local and not (detector / "config.json").is_file():
        what = "does not exist" if not detector.exists() else "is not a detector folder (no config.json)"
        raise CommandError(f"--detector {args.detector} {what}", "write one with: adpretrain fit ... --output DIR")
    if importlib.util.find_spec("gradio") is None:
        raise CommandError("the inspection page needs gradio, which is not installed", APP_EXTRA_HINT)
    from adpretrain_hf.app import launch_app
    from adpretrain_hf.commands._deploy_io import exported_runner, resolve_device

    exported = exported_runner(args.detector, args.runtime, args.device)
    device = "cpu" if exported is not None else resolve_device(args.device)

    print(f"inspection page for {args.detector} at http://{args.host}:{args.port} (Ctrl+C stops it)")
    launch_app(args.detector, threshold=args.threshold, host=args.host, port=args.port,
               device=device, exported=exported, block=True)
    return 0
