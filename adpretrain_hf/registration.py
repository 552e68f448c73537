"""Registers the ADPretrain config/model, the image processor, the detector config/model and the
``anomaly-features`` / ``anomaly-detection`` pipeline tasks with transformers.

Run where the classes are defined: the last line of ``adpretrain_hf/modeling/__init__.py``
imports this module, so whatever uses the models registers them, and ``import adpretrain_hf``
alone stays light (the console script). The one place where tasks meet their pipeline classes:
the model and config files never import pipeline code. A model's ``save_pretrained`` bundles the
pipeline registered here (``modeling.tasks_adpretrain.save_task_pipeline`` looks it up).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from . import detectors  # noqa: F401  (registers the CFLOW/GLASS/UniAD scoring modules their folders need)
from .modeling.configuration_adpretrain import ADPretrainConfig
from .modeling.configuration_detector_adpretrain import ADPretrainDetectorConfig
from .modeling.image_processing_adpretrain import ADPretrainImageProcessor
from .modeling.modeling_adpretrain import ADPretrainModel
from .modeling.modeling_detector_adpretrain import ADPretrainDetectorModel
from .modeling.pipeline_anomaly_detection import AnomalyDetectionPipeline
from .modeling.pipeline_anomaly_features import AnomalyFeaturesPipeline
from .modeling.tasks_adpretrain import ANOMALY_DETECTION_TASK, ANOMALY_FEATURES_TASK

AutoConfig.register(ADPretrainConfig.model_type, ADPretrainConfig, exist_ok=True)
AutoModel.register(ADPretrainConfig, ADPretrainModel, exist_ok=True)
AutoImageProcessor.register(ADPretrainConfig, image_processor_classes={"pil": ADPretrainImageProcessor}, exist_ok=True)
AutoConfig.register(ADPretrainDetectorConfig.model_type, ADPretrainDetectorConfig, exist_ok=True)
AutoModel.register(ADPretrainDetectorConfig, ADPretrainDetectorModel, exist_ok=True)

# pipeline("anomaly-features" | "anomaly-detection", ...) resolve to the package's classes; a folder's
# custom_pipelines is then dropped at load (no trust_remote_code needed)
for task, pipeline_class in ((ANOMALY_FEATURES_TASK, AnomalyFeaturesPipeline), (ANOMALY_DETECTION_TASK, AnomalyDetectionPipeline)):
    PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class, pt_model=AutoModel, type="image")
