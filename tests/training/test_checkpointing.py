"""Checkpoint files without pickle: folder bookkeeping, optimizer/scheduler state through safetensors
and JSON, and the refusals. (Exact resume of a real killed run: tests/project/test_training_reliability.py.)"""

import copy
import warnings

import pytest
import torch

from adpretrain_hf.training import checkpointing as ckpt


def _make(root, *names):
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "marker").write_text(name)


def test_checkpoints_are_listed_by_step_and_temporaries_ignored(tmp_path):
    _make(tmp_path, "checkpoint_10", "checkpoint_2", ".tmp-checkpoint_11", "checkpoint_x")
    (tmp_path / "checkpoint_3").write_text("a file, not a checkpoint")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint_2", "checkpoint_10"]  # numeric, not lexical
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint_10"
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None


def test_commit_keeps_the_newest_and_replaces_a_resaved_step(tmp_path):
    _make(tmp_path, "checkpoint_1", "checkpoint_2", ".tmp-checkpoint_3", ".tmp-leftover")
    final = ckpt.commit(tmp_path / ".tmp-checkpoint_3", keep=2)
    assert final == tmp_path / "checkpoint_3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_2", "checkpoint_3"]  # and no temporaries
    _make(tmp_path, ".tmp-checkpoint_3")
    (tmp_path / ".tmp-checkpoint_3" / "marker").write_text("again")
    ckpt.commit(tmp_path / ".tmp-checkpoint_3", keep=2)
    assert (tmp_path / "checkpoint_3" / "marker").read_text() == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_2", "checkpoint_3"]


def test_commit_keeps_the_highest_steps_whatever_the_save_order(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (3, 10, 7):
        temp = ckpt.temporary_folder(root, step)
        temp.mkdir(parents=True)
        (temp / ckpt.TRAINER_STATE).write_text("{}")
        final = ckpt.commit(temp, keep=2)
        assert final.name == f"checkpoint_{step}" and not temp.exists()
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["checkpoint_7", "checkpoint_10"]  # numeric order
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_10", "checkpoint_7"]


def test_optimizer_and_scheduler_resume_as_if_never_stopped(tmp_path):
    def setup():
        torch.manual_seed(0)
        weights = torch.nn.Parameter(torch.randn(4))
        optimizer = torch.optim.Adam([weights], lr=0.1, betas=(0.8, 0.9))
        return weights, optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3], gamma=0.5)

    def step(weights, optimizer, scheduler):
        optimizer.zero_grad()
        (weights ** 3).sum().backward()
        optimizer.step()
        scheduler.step()

    weights, optimizer, scheduler = setup()
    for _ in range(2):
        step(weights, optimizer, scheduler)
    tensors, values = ckpt.optimizer_state(optimizer)
    saved_state = copy.deepcopy(optimizer.state_dict())
    ckpt.write_tensors(tmp_path / "opt.safetensors", tensors)
    ckpt.write_json(tmp_path / "opt.json", values)
    ckpt.write_json(tmp_path / "sched.json", ckpt.scheduler_state(scheduler))
    saved_weights = weights.detach().clone()
    for _ in range(3):
        step(weights, optimizer, scheduler)

    again, optimizer2, scheduler2 = setup()
    with torch.no_grad():
        again.copy_(saved_weights)
    optimizer2.param_groups[0]["lr"] = 5.0  # restored from the file, not kept
    ckpt.load_optimizer_state(optimizer2, ckpt.read_tensors(tmp_path / "opt.safetensors"), ckpt.read_json(tmp_path / "opt.json"))
    loaded = optimizer2.state_dict()
    assert loaded["param_groups"] == saved_state["param_groups"]
    for param, state in saved_state["state"].items():
        for key, value in state.items():
            assert torch.equal(loaded["state"][param][key], value)
    ckpt.load_scheduler_state(scheduler2, ckpt.read_json(tmp_path / "sched.json"))
    assert optimizer2.param_groups[0]["betas"] == (0.8, 0.9)  # a tuple again after JSON
    for _ in range(3):
        step(again, optimizer2, scheduler2)
    assert torch.equal(again, weights) and scheduler2.get_last_lr() == scheduler.get_last_lr() == [0.05]


def test_lists_pack_and_unpack_in_order():
    tensors = [torch.full((2,), float(i)) for i in range(12)]
    packed = dict(reversed(ckpt.pack_list("centers", tensors).items()))  # as a file may list them
    packed.update({"centers_other/0": torch.zeros(1), "centers/extra": torch.ones(1)})
    assert all(torch.equal(a, b) for a, b in zip(ckpt.unpack_list("centers", packed), tensors))
    assert len(ckpt.unpack_list("centers", packed)) == 12


def test_unsafe_or_foreign_folders_are_refused(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="is not a folder: pass --resume latest"):
        ckpt.check_safe(tmp_path / "nope")
    _make(tmp_path, "checkpoint_1")
    with pytest.raises(ckpt.CheckpointError, match="has no trainer_state.json: it is incomplete"):
        ckpt.check_safe(tmp_path / "checkpoint_1")
    (tmp_path / "checkpoint_1" / ckpt.TRAINER_STATE).write_text("{}")
    ckpt.check_safe(tmp_path / "checkpoint_1")
    (tmp_path / "checkpoint_1" / "optimizer.PT").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match=r"holds pickle files \['optimizer.PT'\].*never opened"):
        ckpt.check_safe(tmp_path / "checkpoint_1")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ckpt.CheckpointError, match="different number of parameter groups"):
        ckpt.load_optimizer_state(optimizer, {}, {"scalars": {}, "param_groups": []})


def test_a_different_thread_count_warns_once_with_the_fix(tmp_path):
    current = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt.check_threads(tmp_path, current)
        ckpt.check_threads(tmp_path, None)  # older checkpoints carry no record
    with pytest.warns(ckpt.ThreadCountWarning, match=f"written with {current + 1} CPU threads.*OMP_NUM_THREADS={current + 1}"):
        ckpt.check_threads(tmp_path, current + 1)


# --------------------------------------------------------------------------- resume: the same run or refused (issue 23)


@pytest.fixture(scope="module")
def one_step_run(realiad_root, tmp_path_factory):
    """A finished 1-step run (tiny-clip) and its checkpoint folder."""
    from adpretrain_hf.training.loop import Pretrainer

    out = tmp_path_factory.mktemp("resume") / "run"
    Pretrainer(_resume_args(realiad_root, out)).train()
    return out, ckpt.latest_checkpoint(out / ckpt.CHECKPOINT_DIR)


def _resume_args(root, out, model=None, **changes):
    from adpretrain_hf.training.arguments import PretrainArguments

    values = dict(data_root=str(root), output_dir=str(out), preset="tiny-clip", batch_size=4, num_workers=0, max_steps=1,
                  mixed_precision="no", progress=False, seed=3, learning_rate=1e-3, report_to="none",
                  model={"training_reference_shots": [1], **(model or {})})
    return PretrainArguments(**{**values, **changes})


@pytest.mark.parametrize("changes,field", [
    ({"seed": 4}, "argument 'seed'"),
    ({"preset": "tiny-dinov2"}, "argument 'preset'"),
    ({"learning_rate": 2e-3}, "argument 'learning_rate'"),
    ({"model": {"projector_num_heads": 2}}, "model config field 'projector_num_heads'"),
    ({"model": {"norm_loss_reduction": "all"}}, "model config field 'norm_loss_reduction'"),
])
def test_resume_refuses_another_run_naming_the_field(realiad_root, tmp_path, one_step_run, changes, field):
    from adpretrain_hf.training.loop import Pretrainer

    _, checkpoint = one_step_run
    args = _resume_args(realiad_root, tmp_path / "other", resume=str(checkpoint), max_steps=2, **changes)
    with pytest.raises(ckpt.CheckpointError, match=f"{field} is .* there but .* in this run.*may change on resume"):
        Pretrainer(args).train()
    assert not (tmp_path / "other" / "metrics.jsonl").exists()  # nothing trained


def test_resume_allows_the_listed_changes(realiad_root, tmp_path, one_step_run):
    """More steps, another output folder, progress and saving cadence: the run continues."""
    import json
    import shutil

    from adpretrain_hf.training.loop import Pretrainer

    out, _ = one_step_run
    copy_dir = tmp_path / "copy"
    shutil.copytree(out, copy_dir)
    args = _resume_args(realiad_root, copy_dir, resume="latest", max_steps=2, checkpoints_total_limit=3, epochs=4)
    assert {"max_steps", "checkpoints_total_limit", "epochs", "resume"} <= ckpt.RESUMABLE_ARGUMENTS
    Pretrainer(args).train()
    steps = [json.loads(line)["step"] for line in (copy_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_check_same_run_names_the_differing_field(tmp_path):
    assert ckpt.FORMAT_VERSION >= 2
    with pytest.raises(ckpt.CheckpointError, match="'seed' is 1 there but 2"):
        ckpt.check_same_run(tmp_path, {"arguments": {"seed": 1}, "model_config": {}}, {"arguments": {"seed": 2}, "model_config": {}})
