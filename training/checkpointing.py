"""Training checkpoints: safetensors + JSON only, written atomically, read without unpickling.

Layout of ``<output_dir>/checkpoints/checkpoint_<step>/``:

* ``projectors.safetensors``            trainable weights (main process)
* ``optimizer.safetensors`` / ``.json`` optimizer tensors / param groups and scalars (main process)
* ``trainer_state.json``                step, epoch, batch in epoch, scheduler, process count, CPU threads (main process)
* ``process_<rank>.safetensors`` / ``.json``  per process: centers, running-center state, RNG states

Every process writes into ``.tmp-checkpoint_<step>``; once all are done the main process
renames it to ``checkpoint_<step>`` (one atomic ``os.replace``), so a kill leaves at most a
temporary folder, which :func:`latest_checkpoint` never picks and the next save removes.
Loading refuses folders holding pickle files (Accelerate's ``.bin``/``.pkl`` states included):
a crafted pickle would run code when loaded, so it is never opened.

A resume continues THE SAME run or is refused (:func:`check_same_run`, issue 23): the model
config (every field), the preset, the seed and every other argument must equal the checkpoint's,
except those in :data:`RESUMABLE_ARGUMENTS` (how long to train, where and how often to save, what
to display); the error names the first field that differs.

Exactness has one condition outside the checkpoint: on CPU, float32 reductions (matmul,
backward) are split across torch's intra-op threads, so a different thread count changes
results by an ulp and the curves drift apart. The count is recorded and a resume under
another count warns (:func:`check_threads`); the run itself never changes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint_"
TEMP_PREFIX = ".tmp-"
FORMAT_VERSION = 2  # 2: trainer_state.json records the run identity (check_same_run)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".npz")
PROJECTORS_FILE = "projectors.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
TRAINER_STATE = "trainer_state.json"
CPU_THREADS_KEY = "cpu_threads"  # torch intra-op threads of the run that wrote the checkpoint
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


RESUMABLE_ARGUMENTS = frozenset({
    "max_steps", "epochs",  # the number of steps: train longer (or shorter) than first planned
    "output_dir", "resume", "checkpoint_every_steps", "checkpoints_total_limit",  # where / how often to save
    "progress", "report_to", "num_workers", "feature_cache_images", "loss_chunk_elements",  # display, speed, memory
    "stop_normal_inside_share", "stop_patience",  # our optional stop rule
    "push_to_hub", "hub_model_id",  # what happens to the result
})
"""``PretrainArguments`` fields that may change on ``--resume``. Everything else (the preset, the
seed, the learning rate and schedule, the data, the batch, the model config's every field) must
equal the checkpoint's: a resumed run that differs would be neither run."""
RUN_IDENTITY_KEY = "run_identity"
_VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "_name_or_path", "architectures", "auto_map",
                                   "custom_pipelines", "torch_dtype", "dtype"})


class CheckpointError(ValueError):
    """A checkpoint folder that cannot (or must not) be loaded; the message says why and what to do."""


def process_files(rank: int) -> tuple[str, str]:
    """``(tensors, json)`` file names of one process's state."""
    return f"process_{rank}.safetensors", f"process_{rank}.json"


def checkpoint_step(folder: Path) -> Optional[int]:
    """The step in a ``checkpoint_<step>`` name, else None."""
    match = _NAME.match(Path(folder).name)
    return int(match.group(1)) if match else None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root`` (temporaries excluded), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(root: Path) -> Optional[Path]:
    found = list_checkpoints(root)
    return found[-1] if found else None


def clean_temporaries(root: Path) -> None:
    """Remove ``.tmp-*`` folders left by a killed save (main process only)."""
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


def temporary_folder(root: Path, step: int) -> Path:
    return root / f"{TEMP_PREFIX}{CHECKPOINT_PREFIX}{step}"


def commit(temp: Path, keep: int) -> Path:
    """Rename a fully written temporary folder into place and drop checkpoints beyond ``keep``."""
    final = temp.parent / temp.name[len(TEMP_PREFIX) :]
    if final.exists():  # the same step saved again (e.g. after a resume): move the old one out first
        os.replace(final, temp.parent / f"{TEMP_PREFIX}old-{final.name}")
    os.replace(temp, final)
    for old in list_checkpoints(final.parent)[:-keep]:
        doomed = old.parent / f"{TEMP_PREFIX}delete-{old.name}"
        os.replace(old, doomed)  # renamed first, so a kill mid-delete leaves no half checkpoint
        shutil.rmtree(doomed, ignore_errors=True)
    clean_temporaries(final.parent)
    return final


def check_safe(folder: Path) -> None:
    """Refuse folders that are not this format or that hold pickles (which are never opened)."""
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} is not a folder: pass --resume latest or a checkpoint_<step> folder")
    pickles = sorted(p.name for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"checkpoint {folder} holds pickle files {pickles}, which can run code when loaded and are never opened: "
            "resume from a checkpoint written by this version (safetensors + JSON), or start a new run"
        )
    if not (folder / TRAINER_STATE).is_file():
        raise CheckpointError(f"checkpoint {folder} has no {TRAINER_STATE}: it is incomplete or not a training checkpoint")


# -- files --------------------------------------------------------------------------------
def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Each tensor saved as its own copy: run state may hold one tensor under two names
    (e.g. fixed centers are also the initial ones), which safetensors refuses as shared memory."""
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(path))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def pack_list(prefix: str, tensors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``[t0, t1]`` -> ``{prefix/0: t0, prefix/1: t1}``."""
    return {f"{prefix}/{i}": t for i, t in enumerate(tensors)}


def unpack_list(prefix: str, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    found = {int(k[len(prefix) + 1 :]): v for k, v in tensors.items() if k.startswith(prefix + "/") and k[len(prefix) + 1 :].isdigit()}
    return [found[i] for i in range(len(found))]


# -- optimizer and scheduler without pickle ----------------------------------------------
def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's ``state_dict`` as tensors (``state/<param>/<key>``) and JSON (groups, scalars)."""
    full = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param, values in full["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state/{param}/{key}"] = value
            else:
                scalars.setdefault(str(param), {})[key] = value
    return tensors, {"param_groups": full["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, param, key = name.split("/", 2)
        state.setdefault(int(param), {})[key] = tensor
    for param, scalars in values["scalars"].items():
        state.setdefault(int(param), {}).update(scalars)
    templates = optimizer.state_dict()["param_groups"]
    if len(templates) != len(values["param_groups"]):
        raise CheckpointError("the checkpoint's optimizer has a different number of parameter groups: resume with the same model and arguments")
    groups = [  # JSON turned tuples (Adam's betas) into lists: back to the types the optimizer uses
        {k: tuple(v) if isinstance(template.get(k), tuple) else v for k, v in group.items()}
        for group, template in zip(values["param_groups"], templates)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """The JSON-safe part of a scheduler's state (milestones and gamma come from the arguments)."""
    out = {}
    for key, value in scheduler.state_dict().items():
        if isinstance(value, dict):  # MultiStepLR's milestone Counter: int keys do not survive JSON
            continue
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[key] = value
    return out


def load_scheduler_state(scheduler: Any, values: dict[str, Any]) -> None:
    scheduler.load_state_dict({**scheduler.state_dict(), **values})


# -- one run's checkpoint, across processes ---------------------------------------------------
def run_identity(trainer: Any) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint: ``{"arguments": {...}, "model_config": {...}}``
    (JSON values; arguments without :data:`RESUMABLE_ARGUMENTS` and ``model``, which the config covers)."""
    arguments = {k: v for k, v in trainer.args.to_dict().items() if k not in RESUMABLE_ARGUMENTS and k != "model"}
    config = {k: v for k, v in trainer.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return json.loads(json.dumps({"arguments": arguments, "model_config": config}, default=str))


def check_same_run(folder: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume ``folder`` when this run differs from the one that wrote it, naming the field."""
    for section, what in (("arguments", "argument"), ("model_config", "model config field")):
        old, new = saved.get(section, {}), current[section]
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                raise CheckpointError(
                    f"cannot resume {folder}: {what} {key!r} is {old.get(key)!r} there but {new.get(key)!r} in this run; "
                    f"resume with the checkpoint's value, or start a new run (another --output-dir, no --resume). "
                    f"Only {', '.join(sorted(RESUMABLE_ARGUMENTS))} may change on resume"
                )


def save_checkpoint(trainer: Any, keep: int) -> Path:
    """Write ``trainer``'s state (a :class:`~adpretrain_hf.training.loop.Pretrainer`) atomically.

    Every process calls this (collective): each writes its own RNG/center file; the main
    process writes weights, optimizer and progress, then renames the folder into place.
    """
    from .seeding import capture_rng_state

    acc, state = trainer.accelerator, trainer.state
    root = trainer.output_dir / CHECKPOINT_DIR
    temp = temporary_folder(root, state.step)
    if acc.is_main_process:
        clean_temporaries(root)
        temp.mkdir(parents=True)
    acc.wait_for_everyone()
    tensors, values = capture_rng_state()
    tensors.update(pack_list("centers", state.centers))
    tensors.update(pack_list("initial_centers", state.initial_centers))
    running = getattr(trainer, "running", None)
    if running is not None:
        running_state = running.state_dict()
        values["running_keys"] = sorted(running_state)
        for key, items in running_state.items():
            tensors.update(pack_list(f"running/{key}", items))
    values["reference_rng"] = trainer.rng.bit_generator.state
    tensor_file, json_file = process_files(acc.process_index)
    write_tensors(temp / tensor_file, tensors)
    write_json(temp / json_file, values)
    if acc.is_main_process:
        write_tensors(temp / PROJECTORS_FILE, acc.unwrap_model(trainer.head).state_dict())
        opt_tensors, opt_values = optimizer_state(trainer.optimizer)
        write_tensors(temp / OPTIMIZER_TENSORS, opt_tensors)
        write_json(temp / OPTIMIZER_JSON, opt_values)
        write_json(temp / TRAINER_STATE, {
            "format_version": FORMAT_VERSION, "step": state.step, "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch, "num_processes": acc.num_processes,
            "seed": trainer.args.seed, "scheduler": scheduler_state(trainer.scheduler),
            CPU_THREADS_KEY: torch.get_num_threads(), RUN_IDENTITY_KEY: run_identity(trainer),
        })  # written last: its presence marks the folder complete
    acc.wait_for_everyone()
    final = root / temp.name[len(TEMP_PREFIX) :]
    if acc.is_main_process:
        commit(temp, keep)
    acc.wait_for_everyone()
    return final


class ThreadCountWarning(RuntimeWarning):
    """A CPU resume under another intra-op thread count than the checkpoint's run: not bit-exact."""


def check_threads(folder: Path, saved: Optional[int]) -> None:
    """Warn when this process's torch thread count differs from the one that wrote ``folder``.

    On CPU the count decides how float32 reductions are split, so with another count the
    resumed curve differs from the uninterrupted one by float rounding (e.g. 218.53073 vs
    218.53072 three steps in). Checkpoints without the record (older ones) are not checked.
    """
    current = torch.get_num_threads()
    if saved is None or int(saved) == current:
        return
    warnings.warn(
        f"checkpoint {folder} was written with {saved} CPU threads, this process uses {current}: the resumed loss "
        f"curve differs from the uninterrupted one by float rounding; resume with OMP_NUM_THREADS={saved} "
        f"(or torch.set_num_threads({saved})) to continue it exactly",
        ThreadCountWarning,
        stacklevel=3,
    )


def load_checkpoint(trainer: Any, folder: Path) -> dict[str, list[torch.Tensor]]:
    """Restore ``trainer`` from ``folder`` (every process); returns the running-center state ({} if none).

    ``folder`` has passed :func:`check_safe` already: the trainer checks it before building anything.
    """
    import numpy as np

    from .seeding import restore_rng_state

    acc, state = trainer.accelerator, trainer.state
    progress = read_json(folder / TRAINER_STATE)
    if progress.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {folder} has format {progress.get('format_version')}, this version reads {FORMAT_VERSION}")
    if progress["num_processes"] != acc.num_processes:
        raise CheckpointError(
            f"checkpoint {folder} was written by {progress['num_processes']} processes, this run has {acc.num_processes}: "
            f"launch with --num_processes {progress['num_processes']} to continue it exactly"
        )
    check_same_run(folder, progress[RUN_IDENTITY_KEY], run_identity(trainer))
    if acc.device.type == "cpu":
        check_threads(folder, progress.get(CPU_THREADS_KEY))
    tensor_file, json_file = process_files(acc.process_index)
    tensors, values = read_tensors(folder / tensor_file), read_json(folder / json_file)
    acc.unwrap_model(trainer.head).load_state_dict(read_tensors(folder / PROJECTORS_FILE))
    load_optimizer_state(trainer.optimizer, read_tensors(folder / OPTIMIZER_TENSORS), read_json(folder / OPTIMIZER_JSON))
    load_scheduler_state(trainer.scheduler, progress["scheduler"])
    state.step, state.epoch, state.batch_in_epoch = progress["step"], progress["epoch"], progress["batch_in_epoch"]
    state.centers = [c.to(acc.device) for c in unpack_list("centers", tensors)]
    state.initial_centers = [c.to(acc.device) for c in unpack_list("initial_centers", tensors)]
    trainer.rng = np.random.default_rng()
    trainer.rng.bit_generator.state = values["reference_rng"]
    restore_rng_state(tensors, values)
    keys = values.get("running_keys", [])
    return {key: [t.to(acc.device) for t in unpack_list(f"running/{key}", tensors)] for key in keys}
