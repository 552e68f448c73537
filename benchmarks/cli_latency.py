"""Wall time of `adpretrain` answers that need no model: every `--help` and typical argument errors.

    python benchmarks/cli_latency.py [--repeats 3]

Each case runs `python -m adpretrain_hf.cli ...` in a fresh process (median of --repeats) next
to a bare `python -c pass`, so the table separates the interpreter's start from the CLI's own
cost. The rule the times follow (no torch, no transformers before a command runs) is tested in
tests/test_cli.py; times are only printed here (house rule 5).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

CASES = (
    ["--help"], ["evaluate", "--help"], ["pretrain", "--help"], ["fit", "--help"], ["predict", "--help"], ["features", "--help"],
    ["predict", "--detector", "runs/missing/det", "--images", "missing.png", "--output", "OUT"],
    ["fit", "--model", "org/name", "--method", "patchcore", "--train", "missing", "--output", "OUT"],
    ["fit", "--model", "org/name", "--method", "patchcore", "--train", ".", "--output", "OUT", "--margin", "nan"],
    ["evaluate", "--preset", "tiny-clip", "--data", "missing"],
)


def _median_seconds(argv: list[str], repeats: int, cwd: str) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, cwd=cwd, timeout=300)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the median is printed (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        bare = _median_seconds([sys.executable, "-c", "pass"], args.repeats, cwd)
        print("| command | s | s over bare python |")
        print("| --- | ---: | ---: |")
        print(f"| `python -c pass` | {bare:.2f} | 0.00 |")
        for case in CASES:
            seconds = _median_seconds([sys.executable, "-m", "adpretrain_hf.cli", *case], args.repeats, cwd)
            print(f"| `adpretrain {' '.join(case)}` | {seconds:.2f} | {seconds - bare:.2f} |")


if __name__ == "__main__":
    main()
