"""Registers the image processor and the ``anomaly-features`` pipeline with transformers.

Kept apart from ``__init__`` so the registrations stay in one place; each is skipped
quietly only when its module does not exist in this build.
"""

from __future__ import annotations

import importlib.util

from transformers import AutoImageProcessor

from .modeling import ADPretrainConfig

if importlib.util.find_spec("adpretrain_hf.modeling.image_processing_adpretrain") is not None:
    from .modeling.image_processing_adpretrain import ADPretrainImageProcessor

    AutoImageProcessor.register(ADPretrainConfig, image_processor_classes={"pil": ADPretrainImageProcessor}, exist_ok=True)

if importlib.util.find_spec("adpretrain_hf.modeling.pipeline_anomaly_features") is not None:
    from .modeling.pipeline_anomaly_features import register_pipeline

    register_pipeline()

if importlib.util.find_spec("adpretrain_hf.modeling.modeling_detector_adpretrain") is not None:
    from transformers import AutoConfig, AutoModel

    from .modeling.configuration_detector_adpretrain import ADPretrainDetectorConfig
    from .modeling.modeling_detector_adpretrain import ADPretrainDetectorModel

    AutoConfig.register(ADPretrainDetectorConfig.model_type, ADPretrainDetectorConfig, exist_ok=True)
    AutoModel.register(ADPretrainDetectorConfig, ADPretrainDetectorModel, exist_ok=True)

if importlib.util.find_spec("adpretrain_hf.modeling.pipeline_anomaly_detection") is not None:
    # The detector config drops a folder's custom_pipelines where this registration exists, so the
    # package's task serves pipeline("anomaly-detection") without trust_remote_code.
    from .modeling.pipeline_anomaly_detection import register_detection_pipeline

    register_detection_pipeline()
