"""Pretraining runs are reproducible, exactly resumable after a real kill, pickle-free and atomic.

Every run is the tiny-clip preset on a 10-image synthetic Real-IAD class (batch 4: three
batches per epoch, so checkpoints fall mid-epoch), compared step by step with exact equality
(CPU float32 is deterministic for a fixed sequence of operations).
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from adpretrain_hf.training import checkpointing, pretrain
from adpretrain_hf.training.arguments import PretrainArguments, load_arguments
from adpretrain_hf.training.loop import run_pretraining

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "training" / "configs" / "tiny-clip.yaml"
STEPS = 6
KILL_AFTER = 2  # checkpoint step of the killed run
KILL_TIMEOUT_S = 300


def _argv(data, out, *extra):
    return [
        "--config", str(TINY_CONFIG), "--data-root", str(data), "--output-dir", str(out), "--batch-size", "4",
        "--max-steps", str(STEPS), "--epochs", "10", "--no-progress", "--report-to", "none",
        "--set", "lr_milestones=[1]", "--set", "center_batches=1", *extra,
    ]


def _args(data, out, **overrides):
    values = dict(
        preset="tiny-clip", data_root=str(data), output_dir=str(out), batch_size=4, max_steps=STEPS, epochs=10,
        learning_rate=1e-3, lr_milestones=[1], center_batches=1, num_workers=0, progress=False, report_to="none", seed=42,
    )
    values.update(overrides)
    return PretrainArguments(**values)


def _records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _losses(out):
    return [(r["step"], r["loss"], r["angle/layer_0"], r["norm/layer_3"]) for r in _records(out)]


@pytest.fixture(scope="module")
def reference_run(realiad_root, tmp_path_factory):
    """The uninterrupted run: STEPS steps, seed 42, no workers."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_pretraining(_args(realiad_root, out))
    return out


# -- 1. reproducible ---------------------------------------------------------------------------
def test_same_seed_gives_the_same_curve_with_or_without_workers(realiad_root, reference_run, tmp_path):
    again = tmp_path / "again"
    run_pretraining(_args(realiad_root, again, num_workers=2))
    assert len(_losses(reference_run)) == STEPS
    assert _losses(again) == _losses(reference_run)  # exact: augmentation does not depend on the worker
    other = tmp_path / "other"
    run_pretraining(_args(realiad_root, other, seed=7, max_steps=2))
    assert [r[1] for r in _losses(other)] != [r[1] for r in _losses(reference_run)[:2]]


def test_augmentation_depends_on_seed_epoch_and_row_only(realiad_root):
    from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor
    from adpretrain_hf.training.data_pipeline import build_training_data

    processor = ADPretrainImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    data = build_training_data(str(realiad_root), processor, seed=3)
    first = data.dataset[5]["view1"]
    assert torch.equal(data.dataset[[4, 5]]["view1"][1], first)  # not tied to the batch it comes in
    data.set_epoch(1)
    assert not torch.equal(data.dataset[5]["view1"], first)
    data.set_epoch(0)
    assert torch.equal(data.dataset[5]["view1"], first)
    other = build_training_data(str(realiad_root), processor, seed=4)
    assert not torch.equal(other.dataset[5]["view1"], first)


# -- 2. exactly resumable after a real kill ---------------------------------------------------------
# The killed run uses this process's thread count: on CPU the count decides how float32
# reductions are split, so runs under different counts differ by an ulp without any resume.
_HANG_AFTER_STEP = """
import sys, time
import torch
torch.set_num_threads({threads})
from adpretrain_hf.training import loop, pretrain
write = loop.Pretrainer._write_metrics
def hang(self, record):
    write(self, record)
    if record["step"] > {kill_after}:  # past the checkpoint: wait here to be killed
        print("waiting to be killed", flush=True)
        time.sleep(3600)
loop.Pretrainer._write_metrics = hang
sys.exit(pretrain.main(sys.argv[1:]))
"""


def test_a_killed_run_resumes_on_the_uninterrupted_curve(realiad_root, reference_run, tmp_path):
    out = tmp_path / "killed"
    argv = _argv(realiad_root, out, "--checkpoint-every-steps", str(KILL_AFTER), "--set", "learning_rate=1e-3", "--seed", "42")
    script = _HANG_AFTER_STEP.format(kill_after=KILL_AFTER, threads=torch.get_num_threads())
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            records = _records(out) if (out / "metrics.jsonl").is_file() else []
            if records and records[-1]["step"] > KILL_AFTER:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert [r["step"] for r in _records(out)] == list(range(1, KILL_AFTER + 2))  # one step past the checkpoint
    root = out / "checkpoints"
    assert [p.name for p in checkpointing.list_checkpoints(root)] == [f"checkpoint_{KILL_AFTER}"]
    (root / ".tmp-checkpoint_99").mkdir()  # a stale temporary (a save killed midway) is never picked
    (root / ".tmp-checkpoint_99" / "projectors.safetensors").write_bytes(b"half")

    assert checkpointing.read_json(root / f"checkpoint_{KILL_AFTER}" / checkpointing.TRAINER_STATE)["cpu_threads"] == torch.get_num_threads()

    with warnings.catch_warnings():
        warnings.simplefilter("error", checkpointing.ThreadCountWarning)  # same count: no warning
        assert pretrain.main(argv + ["--resume", "latest"]) == 0
    assert _losses(out) == _losses(reference_run)  # the whole curve, exactly; each step once
    assert not (root / ".tmp-checkpoint_99").exists()


def test_a_resume_under_another_cpu_thread_count_warns(tmp_path):
    threads = torch.get_num_threads()
    with pytest.warns(checkpointing.ThreadCountWarning, match=rf"written with {threads + 1} CPU threads, this process uses {threads}:.*OMP_NUM_THREADS={threads + 1}"):
        checkpointing.check_threads(tmp_path, threads + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpointing.check_threads(tmp_path, threads)  # same count
        checkpointing.check_threads(tmp_path, None)  # a checkpoint from before the record


def test_a_cnn_backbone_run_resumes_exactly_in_process(realiad_root, tmp_path):
    """tiny-cnn's batched convolutions round differently with the batch's content, so this
    fails when reference tokens are computed in history-dependent groups (empty cache on resume)."""
    steps = 4
    reference = tmp_path / "reference"
    run_pretraining(_args(realiad_root, reference, preset="tiny-cnn", max_steps=steps, checkpoint_every_steps=KILL_AFTER))
    resumed = tmp_path / "resumed"
    _copy_checkpoint(reference / "checkpoints" / f"checkpoint_{KILL_AFTER}", resumed)
    lines = (reference / "metrics.jsonl").read_text().splitlines()[:KILL_AFTER]
    (resumed / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    run_pretraining(_args(realiad_root, resumed, preset="tiny-cnn", max_steps=steps, resume="latest"))
    terms = [[(k, v) for k, v in r.items() if k == "step" or k == "loss" or k.startswith(("angle/", "norm/"))] for r in _records(resumed)]
    assert [r["step"] for r in _records(resumed)] == list(range(1, steps + 1))
    assert terms == [[(k, v) for k, v in r.items() if k == "step" or k == "loss" or k.startswith(("angle/", "norm/"))] for r in _records(reference)]


# -- 3. no pickle on resume --------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _copy_latest_checkpoint(run, out):
    """A copy of ``run``'s latest checkpoint under ``out/checkpoints``; returns the copy."""
    return _copy_checkpoint(checkpointing.latest_checkpoint(run / "checkpoints"), out)


def _copy_checkpoint(source, out):
    """A copy of the checkpoint folder ``source`` under ``out/checkpoints``; returns the copy."""
    target = out / "checkpoints" / source.name
    target.mkdir(parents=True)
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def _write_payload(path, marker):
    payload = _Payload()
    payload.marker = str(marker)
    path.write_bytes(pickle.dumps({"state": payload}))


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl"])
def test_resume_refuses_pickles_and_never_runs_them(realiad_root, reference_run, tmp_path, capsys, name):
    out = tmp_path / "run"
    target = _copy_latest_checkpoint(reference_run, out)
    marker = tmp_path / "pwned"
    _write_payload(target / name, marker)
    code = pretrain.main(["--data-root", str(realiad_root), "--output-dir", str(out), "--preset", "tiny-clip", "--report-to", "none", "--resume", "latest", "--no-progress"])
    err = capsys.readouterr().err
    assert code == pretrain.EXIT_USAGE
    assert "pickle" in err and name in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists()
    pickle.loads((target / name).read_bytes())  # the payload is live: loading it would have run it
    assert marker.exists()


def test_resume_loads_without_any_unpickling(realiad_root, reference_run, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    _copy_latest_checkpoint(reference_run, out)

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, forbidden)
    run_pretraining(_args(realiad_root, out, resume="latest", max_steps=STEPS + 1))
    assert [r["step"] for r in _records(out)] == [STEPS + 1]


def test_an_older_checkpoint_with_a_sampler_entry_still_resumes(realiad_root, reference_run, tmp_path):
    """Checkpoints once saved the reference sampler's unused generator: the entry is ignored."""
    out = tmp_path / "copy"
    copy = _copy_latest_checkpoint(reference_run, out)
    state_file = copy / checkpointing.process_files(0)[1]
    values = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**values, "sampler": {"rng": {"bit_generator": "PCG64", "state": {}}}}))
    run_pretraining(_args(realiad_root, out, resume="latest", max_steps=STEPS + 1))
    assert [r["step"] for r in _records(out)] == [STEPS + 1]


# -- 4. atomic checkpoints -------------------------------------------------------------------------
def test_a_save_killed_midway_leaves_only_a_temporary(realiad_root, reference_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    before = checkpointing.latest_checkpoint(reference_run / "checkpoints")
    before_files = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in before.iterdir()}
    original = checkpointing.write_json

    def crash_on_state(path, value):
        if path.name == checkpointing.TRAINER_STATE and value["step"] == 2:
            raise KeyboardInterrupt("killed while saving")
        original(path, value)

    monkeypatch.setattr(checkpointing, "write_json", crash_on_state)
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(_args(realiad_root, out, checkpoint_every_steps=1, max_steps=3))
    root = out / "checkpoints"
    assert [p.name for p in checkpointing.list_checkpoints(root)] == ["checkpoint_1"]
    assert (root / ".tmp-checkpoint_2").is_dir()
    assert checkpointing.latest_checkpoint(root).name == "checkpoint_1"
    # the reference run's latest checkpoint is untouched by this one
    assert checkpointing.latest_checkpoint(reference_run / "checkpoints") == before
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in before.iterdir()} == before_files


def test_final_model_has_its_own_folder(reference_run, capsys):
    from adpretrain_hf import ADPretrainModel

    model_dir = reference_run / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "README.md").is_file()
    assert not (reference_run / "model.safetensors").exists()
    assert {"checkpoints", "metrics.jsonl", "model"} <= {p.name for p in reference_run.iterdir()}
    model = ADPretrainModel.from_pretrained(model_dir)
    state = checkpointing.read_tensors(checkpointing.latest_checkpoint(reference_run / "checkpoints") / checkpointing.PROJECTORS_FILE)
    for name, tensor in model.projectors.state_dict().items():
        assert torch.equal(tensor, state[f"projectors.{name}"])  # the last checkpoint's weights


# -- 5. argument validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, words",
    [
        (["--max-steps", "0"], ["max_steps", "leave it out"]),
        (["--max-steps", "-3"], ["max_steps", ">= 1"]),
        (["--set", "model.norm_knd=release"], ["model.norm_knd", "'norm_kind'"]),
        (["--set", "batch_size=abc"], ["batch_size", "int", "'abc'"]),
        (["--batch-size", "0"], ["batch_size", ">= 1"]),
        (["--report-to", "tensorbord"], ["report_to", "'tensorboard'"]),
        (["--report-to", "wandb"], ["wandb", "--report-to none"]),
    ],
)
def test_bad_arguments_are_one_line_errors_with_exit_2(realiad_root, tmp_path, capsys, extra, words):
    if extra == ["--report-to", "wandb"]:
        from accelerate.utils import is_wandb_available

        if is_wandb_available():
            pytest.skip("wandb is installed here")
    out = tmp_path / "run"
    code = pretrain.main(["--config", str(TINY_CONFIG), "--data-root", str(realiad_root), "--output-dir", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert not out.exists()  # nothing trained, nothing written


def test_the_accelerate_entry_point_prints_one_line_and_exits_2(realiad_root, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "training" / "pretrain.py"), "--data-root", str(realiad_root), "--max-steps", "0"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "max_steps" in result.stderr and "Traceback" not in result.stderr


def test_set_values_are_parsed_for_the_fields_type(tmp_path):
    args = load_arguments(None, {}, ["preset=123", "resume=null", "learning_rate=1e-3", "lr_milestones=[2, 4]", "max_steps=5"])
    assert (args.preset, args.resume, args.learning_rate, args.lr_milestones, args.max_steps) == ("123", None, 1e-3, [2, 4], 5)
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-4\nmodel:\n  norm_kind: release\n")  # YAML 1.1 reads 1e-4 as text
    assert load_arguments(str(config), {}, []).learning_rate == 1e-4


# -- 6. trackers ---------------------------------------------------------------------------------------------
def test_report_to_none_needs_no_tracker_package(realiad_root, tmp_path, monkeypatch):
    import accelerate.tracking

    from adpretrain_hf.training.arguments import tracker_names

    assert tracker_names("none") is None and tracker_names("tensorboard") == ["tensorboard"]

    def no_tensorboard(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorboard' (blocked by the test)")

    monkeypatch.setattr(accelerate.tracking.TensorBoardTracker, "__init__", no_tensorboard)
    out = tmp_path / "run"
    run_pretraining(_args(realiad_root, out, max_steps=1, report_to="none"))
    assert [r["step"] for r in _records(out)] == [1]
    assert not list(out.rglob("events.out.tfevents*"))

    monkeypatch.setattr("accelerate.utils.is_tensorboard_available", lambda: False)
    with pytest.raises(ValueError, match="pip install tensorboard"):
        tracker_names("tensorboard")


def test_the_adpretrain_command_forwards_and_keeps_one_line_errors(realiad_root, tmp_path, capsys):
    from adpretrain_hf.cli import main

    code = main(["pretrain", "--config", str(TINY_CONFIG), "--data-root", str(realiad_root), "--output-dir", str(tmp_path / "run"), "--set", "model.layerz=[1]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'layers'" in err, err


@pytest.mark.parametrize("config", sorted((REPO / "training" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_pass_validation(config, tmp_path):
    from adpretrain_hf.modeling.presets_adpretrain import PRESETS

    args = load_arguments(str(config), {"data_root": str(tmp_path)}, []).validate()
    assert args.preset in PRESETS
    if config.stem in PRESETS:
        assert args.preset == config.stem  # a preset's config trains that preset
    else:  # a loss recipe (paper.yaml, release.yaml) says which loss it sets
        assert args.model, f"{config.name} is named after no preset and sets no model field"
