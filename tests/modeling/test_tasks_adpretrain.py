"""Task names and remote-code pipelines: what config.json gets, and only where the package registered."""

import json

import pytest

import adpretrain_hf  # noqa: F401 - importing the package registers its tasks
from adpretrain_hf.modeling.pipeline_anomaly_detection import AnomalyDetectionPipeline
from adpretrain_hf.modeling.tasks_adpretrain import (
    ANOMALY_DETECTION_TASK,
    TASKS,
    custom_pipeline_entry,
    registered_pipeline_class,
    save_task_pipeline,
    task_registered_locally,
)


def test_the_package_registers_its_tasks_and_only_those():
    assert TASKS == ("anomaly-features", "anomaly-detection")
    assert all(task_registered_locally(task) for task in TASKS)
    assert registered_pipeline_class(ANOMALY_DETECTION_TASK) is AnomalyDetectionPipeline
    builtin = registered_pipeline_class("image-classification")  # transformers' own: a lazy path string (None)
    assert builtin is None or builtin.__module__.startswith("transformers.")
    assert not task_registered_locally("image-classification")
    assert registered_pipeline_class("no-such-task") is None and not task_registered_locally("no-such-task")


def test_custom_pipeline_entry_names_file_and_class():
    class Fake:
        pass

    Fake.__module__ = "some.package.pipeline_fake"
    assert custom_pipeline_entry("t", Fake) == {"t": {"impl": "pipeline_fake.Fake", "pt": ["AutoModel"], "type": "image"}}


def test_save_task_pipeline_writes_the_entry_and_the_code(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x", "custom_pipelines": {"other": {}}}))
    assert save_task_pipeline(tmp_path, ANOMALY_DETECTION_TASK)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "x" and config["custom_pipelines"]["other"] == {}  # kept
    assert config["custom_pipelines"][ANOMALY_DETECTION_TASK]["impl"] == "pipeline_anomaly_detection.AnomalyDetectionPipeline"
    assert (tmp_path / "pipeline_anomaly_detection.py").is_file()


def test_unregistered_task_writes_nothing_and_a_folder_needs_its_config(tmp_path):
    assert save_task_pipeline(tmp_path, "no-such-task") is False and not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="has no config.json: save the model with save_pretrained"):
        save_task_pipeline(tmp_path, ANOMALY_DETECTION_TASK)
