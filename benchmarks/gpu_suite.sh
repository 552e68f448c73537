#!/usr/bin/env bash
# One GPU check of the package, under 8 minutes on one H100/H200, ending in one table:
#   model forward vs bare backbone (clip-large, bf16, batch 64), pipeline vs model,
#   pretraining samples/s and peak memory (clip-large, batch 32, K=8), evaluation images/s
#   (with and without the feature cache), PatchCore/PaDiM fit and predict on the GPU, the per-image
#   deploy latency by stage (clip-large bf16, benchmarks/latency.py), and the tests that skip
#   without CUDA.
#
#   bash benchmarks/gpu_suite.sh               # on the GPU box
#   bash benchmarks/gpu_suite.sh --cpu-smoke   # tiny presets on the CPU: checks the plumbing
#
# No network: every model is a preset built with random weights of the real shape (the
# numbers are speeds, never accuracies). Works on a bare box where torch/transformers and the
# other wheels are importable (e.g. via PYTHONPATH) and this package is installed with
# `pip install --no-deps -e .`; nothing is installed here. PYTHON=... picks the interpreter.
# Every step runs under `timeout`; a failed or timed-out step is marked in the table and the
# suite goes on. Logs stay in $SUITE_LOGS (default: a temporary folder), printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    MODE=cpu
elif [[ $# -gt 0 ]]; then
    echo "usage: bash benchmarks/gpu_suite.sh [--cpu-smoke]" >&2
    exit 2
fi
PY=${PYTHON:-python3}
LOGS=${SUITE_LOGS:-$(mktemp -d -t adpretrain-gpu-suite-XXXXXX)}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MPLBACKEND=Agg

if [[ $MODE == gpu ]]; then
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "no CUDA device visible to $PY: run on the GPU box, or use --cpu-smoke" >&2
        exit 1
    fi
    BIG=clip-large; DEV=cuda
    THROUGHPUT=(--preset "$BIG" --dtype bf16 --batch-size 64 --iters 10 --warmup 3 --device "$DEV")
    PIPELINE=(--preset "$BIG" --dtype bf16 --batch-size 64 --num-images 256 --repeats 2 --device "$DEV")
    PRETRAIN=(--preset "$BIG" --dtype bf16 --batch-size 32 --shots 8 --iters 3 --warmup 1 --device "$DEV")
    # PaDiM left out: clip-large's 4 x 1024 channels make 256 covariances of 4096 x 4096 (17 GB)
    EVALUATION=(--preset "$BIG" --dtype bf16 --device "$DEV" --num-train 48 --num-test 32 --repeats 2 --methods featurenorm,patchcore
                --modes no-cache,cache)
    DETECTORS=(--devices "$DEV" --train 200 --test 50 --threads 0)
    LATENCY=(--preset "$BIG" --device "$DEV" --dtype bf16 --runtimes eager --batch-sizes 1,16 --train-images 10 --repeats 5 --warmup 2)
    T_THROUGHPUT=60; T_PIPELINE=75; T_PRETRAIN=90; T_EVALUATION=150; T_DETECTORS=60; T_LATENCY=90; T_TESTS=40
else
    BIG=tiny-clip; DEV=cpu
    THROUGHPUT=(--preset "$BIG" --batch-size 4 --iters 1 --warmup 1 --device "$DEV")
    PIPELINE=(--preset "$BIG" --batch-size 4 --num-images 8 --repeats 1 --device "$DEV")
    PRETRAIN=(--preset "$BIG" --batch-size 2 --shots 2 --iters 1 --warmup 1 --device "$DEV")
    EVALUATION=(--preset "$BIG" --device "$DEV" --num-train 4 --num-test 4 --methods featurenorm,padim --shots 2
                --num-overlays 1 --no-warmup --repeats 1 --modes no-cache,cache)
    DETECTORS=(--devices "$DEV" --train 8 --test 4 --layers 2 --channels 16 --grid 4 --image-size 32 --batch-size 4)
    LATENCY=(--preset "$BIG" --image-size 64 --backbone-weights random --device "$DEV" --dtype bf16 --runtimes eager
             --batch-sizes 1,2 --train-images 2 --repeats 1 --warmup 0)
    T_THROUGHPUT=120; T_PIPELINE=120; T_PRETRAIN=120; T_EVALUATION=300; T_DETECTORS=120; T_LATENCY=240; T_TESTS=300
fi

declare -A STATUS
step() {  # step NAME SECONDS command...: run with a timeout, log to $LOGS/NAME.log, record the outcome
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo ">> $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    if [[ $rc -eq 0 ]]; then STATUS[$name]="ok ${took}s"
    elif [[ $rc -eq 124 || $rc -eq 137 ]]; then STATUS[$name]="TIMEOUT ${limit}s"
    else STATUS[$name]="FAILED rc=$rc"; fi
    echo "   ${STATUS[$name]}"
}

"$PY" -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__, '| device',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')" 2>&1 | tee "$LOGS/versions.log"
echo "mode $MODE: random weights of the presets' real shapes (no network); logs in $LOGS"

step throughput "$T_THROUGHPUT" "$PY" benchmarks/throughput.py "${THROUGHPUT[@]}"
step pipeline "$T_PIPELINE" "$PY" benchmarks/pipeline_throughput.py "${PIPELINE[@]}"
step pretrain "$T_PRETRAIN" "$PY" benchmarks/pretrain_throughput.py "${PRETRAIN[@]}"
step evaluation "$T_EVALUATION" "$PY" benchmarks/evaluation.py "${EVALUATION[@]}" --work "$LOGS/evaluation-work"
step detectors "$T_DETECTORS" "$PY" benchmarks/detectors.py "${DETECTORS[@]}"
step latency "$T_LATENCY" "$PY" benchmarks/latency.py "${LATENCY[@]}"
# The tests that skip without CUDA: files that test torch.cuda.is_available(), their cuda/gpu tests.
mapfile -t CUDA_TEST_FILES < <(grep -rl --include='test_*.py' "cuda.is_available" tests)
if [[ ${#CUDA_TEST_FILES[@]} -gt 0 ]]; then
    step cuda-tests "$T_TESTS" "$PY" -m pytest -q -rs -p no:cacheprovider "${CUDA_TEST_FILES[@]}" -k "cuda or gpu"
else
    STATUS[cuda-tests]="none found"
fi

for name in throughput pipeline pretrain evaluation detectors latency cuda-tests; do
    echo "${STATUS[$name]}" >"$LOGS/$name.status"
done
MODE=$MODE BIG=$BIG LOGS=$LOGS "$PY" - <<'EOF'
"""Collect the steps' own tables into one."""
import os
import re
from pathlib import Path

logs, mode, big = Path(os.environ["LOGS"]), os.environ["MODE"], os.environ["BIG"]


def text(name: str) -> str:
    path = logs / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def status(name: str) -> str:
    path = logs / f"{name}.status"
    return path.read_text().strip() if path.exists() else "not run"


def row(name: str, label: str) -> list[str]:
    """The cells of the markdown row of log ``name`` whose first cell starts with ``label``."""
    for line in text(name).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and cells[0].startswith(label):
            return cells
    return []


def cell(name: str, label: str, index: int) -> str:
    cells = row(name, label)
    return cells[index] if len(cells) > index else "n/a"


rows = []
rows.append((f"backbone alone, img/s ({big}, batch 64)" if mode == "gpu" else f"backbone alone, img/s ({big})",
             cell("throughput", "backbone only", 1), "", "throughput"))
rows.append(("model forward, img/s", cell("throughput", "ADPretrain forward", 1),
             f"ratio to backbone {cell('throughput', 'ADPretrain forward', 4)}, peak MiB {cell('throughput', 'ADPretrain forward', 3)}",
             "throughput"))
rows.append(("pipeline, img/s", cell("pipeline", "pipeline", 1), f"ratio to model forward {cell('pipeline', 'pipeline', 2)}", "pipeline"))
peak = re.search(r"peak=(\S+ \S+|n/a \(CPU\))", text("pretrain"))
rows.append(("pretraining, samples/s (cached refs)", cell("pretrain", "train step, cached", 1),
             f"uncached {cell('pretrain', 'train step, references', 1)}, peak {peak.group(1) if peak else 'n/a'}", "pretrain"))
for mode_name in ("cache", "no-cache"):
    rows.append((f"evaluation, imgs/s ({mode_name})", cell("evaluation", mode_name, 4),
                 f"backbone imgs / distinct {cell('evaluation', mode_name, 2)}, run / bare pass {cell('evaluation', mode_name, 7)}",
                 "evaluation"))
for method in ("patchcore", "padim"):
    found = [l.split() for l in text("detectors").splitlines() if re.match(rf"\S+\s+{method}\s+ours\s", l)]
    fit, pred = (found[0][3], found[0][5]) if found and len(found[0]) > 5 else ("n/a", "n/a")
    rows.append((f"{method} fit s / predict s", f"{fit} / {pred}", "200 train + 50 test, 3x256 at 16x16" if mode == "gpu" else "tiny", "detectors"))
for method in ("patchcore", "featurenorm"):  # latency.py's stage table, pretrained features, 1 thread, batch 1
    cells = next(([c.strip() for c in l.strip().strip("|").split("|")] for l in text("latency").splitlines()
                  if l.startswith(f"| pretrained | {method} | 1 | 1 |")), [])
    rows.append((f"deploy latency, {method} (pretrained), ms / img", cells[10] if len(cells) > 11 else "n/a",
                 f"pipeline / bare backbone {cells[11] if len(cells) > 11 else 'n/a'}, batch 1, bf16", "latency"))
summary = [l for l in text("cuda-tests").splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", l)]
rows.append(("CUDA-only tests", summary[-1].strip("= ") if summary else "n/a", "", "cuda-tests"))

print(f"\n## ADPretrain GPU suite ({mode}; random weights of the real shapes, no network)\n")
print("| measurement | value | detail | step |")
print("| --- | ---: | --- | --- |")
for what, value, detail, step in rows:
    print(f"| {what} | {value} | {detail} | {step}: {status(step)} |")
print(f"\nlogs: {logs}")
EOF
failed=0
for name in throughput pipeline pretrain evaluation detectors latency cuda-tests; do
    if [[ ${STATUS[$name]} != ok* ]]; then
        failed=1
        echo "--- tail of $name.log ---"
        tail -n 15 "$LOGS/$name.log"
    fi
done
exit $failed
