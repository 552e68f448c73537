"""The ADPretrain model, Hub-style: config, presets, backbone adapters, Feature Projector,
residual matching, anomaly maps, checkpoint plumbing (and the image processor / pipeline)."""

from .configuration_adpretrain import ADPretrainConfig
from .modeling_adpretrain import ADPretrainModel, ADPretrainOutput, ADPretrainPreTrainedModel
from .presets_adpretrain import PRESETS, Preset, get_preset, register_preset

__all__ = [
    "ADPretrainConfig",
    "ADPretrainModel",
    "ADPretrainOutput",
    "ADPretrainPreTrainedModel",
    "PRESETS",
    "Preset",
    "get_preset",
    "register_preset",
]

# Registration where the classes are defined: using the models registers them with transformers
# (Auto classes, pipeline tasks); last, because it imports the modules above.
from .. import registration  # noqa: E402,F401
