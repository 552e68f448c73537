"""The package's pipeline tasks: their names, whether this install serves them, and the
``custom_pipelines`` entry a saved folder carries.

Why here and not in the pipeline files: the config and model files need the task names (the
config drops a folder's ``custom_pipelines`` where the installed package serves the task; the
model bundles the pipeline code at save time), and model/config code must not import pipeline
code. The pipeline class to bundle is looked up in transformers' ``PIPELINE_REGISTRY``, where
``adpretrain_hf.registration`` registered it, so this file imports no pipeline module.

Part of the remote-code bundle: imports only transformers.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Union

ANOMALY_FEATURES_TASK = "anomaly-features"
ANOMALY_DETECTION_TASK = "anomaly-detection"
TASKS = (ANOMALY_FEATURES_TASK, ANOMALY_DETECTION_TASK)
PACKAGE_PREFIX = "adpretrain_hf."  # module prefix of classes the installed package registered
PIPELINE_MODEL_CLASSES = ("AutoModel",)  # ``custom_pipelines[task]["pt"]``: model classes by name


def registered_pipeline_class(task: str) -> Optional[type]:
    """The pipeline class transformers' registry serves ``task`` with, or None.

    transformers 5 lists its own tasks' pipelines as dotted-path strings (imported lazily); a
    registered class is always a class, so a string means "not ours" and gives None.
    """
    try:
        from transformers.pipelines import PIPELINE_REGISTRY

        impl = PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl")
    except Exception:  # noqa: BLE001 - any failure means: not registered here
        return None
    return impl if isinstance(impl, type) else None


def task_registered_locally(task: str) -> bool:
    """True when an installed adpretrain_hf registered the pipeline of ``task``."""
    impl = registered_pipeline_class(task)
    return impl is not None and impl.__module__.startswith(PACKAGE_PREFIX)


def custom_pipeline_entry(task: str, pipeline_class: type) -> dict[str, dict[str, Any]]:
    """The ``custom_pipelines`` entry of config.json, as ``Pipeline.save_pretrained`` writes it
    (transformers 5: impl as ``"<file>.<class>"``, model classes by name, no ``tf``)."""
    impl = f"{pipeline_class.__module__.split('.')[-1]}.{pipeline_class.__name__}"
    return {task: {"impl": impl, "pt": list(PIPELINE_MODEL_CLASSES), "type": "image"}}


def save_task_pipeline(save_directory: Union[str, os.PathLike], task: str) -> bool:
    """Make a saved folder a remote-code pipeline of ``task``: copy the registered pipeline's file
    (and its relative imports) and add ``custom_pipelines`` to config.json, so
    ``pipeline(task, model=dir_or_id, trust_remote_code=True)`` works where adpretrain_hf is not
    installed. Returns False (and writes nothing) where the package did not register ``task``
    (e.g. a model loaded as remote code and saved again without the package).
    """
    if not task_registered_locally(task):
        return False
    from transformers.dynamic_module_utils import custom_object_save

    folder = os.fspath(save_directory)
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"{folder} has no config.json: save the model with save_pretrained(dir) first")
    pipeline_class = registered_pipeline_class(task)
    custom_object_save(pipeline_class, folder)
    with open(config_file, encoding="utf-8") as handle:
        config = json.load(handle)
    config["custom_pipelines"] = {**config.get("custom_pipelines", {}), **custom_pipeline_entry(task, pipeline_class)}
    with open(config_file, "w", encoding="utf-8") as handle:  # PretrainedConfig's own JSON layout
        handle.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True


__all__ = [
    "ANOMALY_DETECTION_TASK", "ANOMALY_FEATURES_TASK", "TASKS", "custom_pipeline_entry",
    "registered_pipeline_class", "save_task_pipeline", "task_registered_locally",
]
