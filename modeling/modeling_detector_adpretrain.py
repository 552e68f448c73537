"""``ADPretrainDetectorModel``: a fitted anomaly detector as one Hub folder.

The model holds its feature source (an :class:`ADPretrainModel`: frozen backbone + projectors,
bundled so a deployment machine needs no network) and the method's fitted tensors as
registered buffers (safetensors, no pickle): FeatureNorm and the residuals' reference bank,
PatchCore's memory bank, PaDiM's means and Cholesky factors, a trained method's weights.

Shapes (B images, H x W the processor's size)::

    pixel_values       [B, 3, H, W]   processor-normalised
    anomaly_map        [B, H, W]      float32
    score              [B]            raw image score, one per image
    normalized_score   [B]            in [0, 1], threshold at 0.5   (None until calibrated)
    label              [B]            bool, score >= image_threshold (None until calibrated)
    pred_mask          [B, H, W]      bool, map >= pixel_threshold   (None until calibrated)

The model is thin: it extracts the used layers' features and calls its ``detector``, the
method's :class:`DetectorModule` built from the registry (``config.method``) with its fitted
buffers loaded, whose ``forward`` is the one scoring path. FeatureNorm, PatchCore and PaDiM
score with this folder's code only (remote code works without ``adpretrain_hf``); CFLOW, GLASS
and UniAD register their modules when ``adpretrain_hf`` is imported. PatchCore searches with
the plain-torch ``"traceable"`` backend, so FeatureNorm and PatchCore export to ONNX as they are.

Loading is checked: the safetensors metadata records the folder's structure (method, feature
kind, layer positions, settings, fitted shapes, the feature model's structural fields); a config
that differs, a missing tensor or a non-finite one is a one-line error naming it.

Part of the remote-code bundle.
"""

from __future__ import annotations

import json
from typing import Optional, Union

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.utils import logging as hf_logging

from .detectors_adpretrain import FeatureNormModule  # noqa: F401  (registers FeatureNorm, PatchCore, PaDiM)
from .anomaly_map_adpretrain import tokens_to_grid
from .calibration_adpretrain import normalize_scores
from .checkpoint_io_adpretrain import add_structure_metadata, keep_saved_processor, save_folder
from .checkpoint_io_adpretrain import _checkpoint_header as checkpoint_header
from .configuration_detector_adpretrain import ADPretrainDetectorConfig
from .detector_module_adpretrain import DetectorModule, allocate_buffers, build_detector_module, check_finite
from .image_processing_adpretrain import hub_download_kwargs, processor_for
from .matching_adpretrain import TRACEABLE_BACKEND
from .modeling_adpretrain import ADPretrainModel, ADPretrainPreTrainedModel
from .outputs_adpretrain import AnomalyDetectionOutput
from .tasks_adpretrain import ANOMALY_DETECTION_TASK, save_task_pipeline

REFERENCE_BANK_PREFIX = "reference_bank_"  # + layer position: [M_l, C_l] backbone tokens of the references


def structure_mismatch(saved: Optional[dict], config: ADPretrainDetectorConfig) -> Optional[str]:
    """``"field: the config says X, the weights were saved with Y"`` for the first differing field."""
    if not saved:
        return None
    current = json.loads(json.dumps(config.weights_structure()))
    for field in sorted(set(saved) | set(current)):
        if current.get(field) != saved.get(field):
            return f"{field}: the config says {current.get(field)!r} but the weights were saved with {saved.get(field)!r}"
    return None


class ADPretrainDetectorModel(ADPretrainPreTrainedModel):
    """A fitted detector: ``pixel_values [B, 3, H, W]`` -> :class:`AnomalyDetectionOutput`.

    Build one with ``adpretrain_hf.fit_detector(...)`` (or ``deployment.detector_to_model``);
    load one with ``from_pretrained(dir_or_hub_id)``. ``adpretrain_model`` lets the fitting code
    hand over the already-built feature model instead of allocating a second one.

    Submodules: ``adpretrain`` (the feature model), ``detector`` (the method's
    :class:`DetectorModule`, its fitted state as buffers or a network), ``references`` (the
    residuals' reference banks ``reference_bank_<position> [M_l, C_l]`` for pretrained features).
    """

    config_class = ADPretrainDetectorConfig
    base_model_prefix = "adpretrain"
    _keys_to_ignore_on_load_missing = None

    def __init__(self, config: ADPretrainDetectorConfig, adpretrain_model: Optional[ADPretrainModel] = None) -> None:
        super().__init__(config)
        if not config.method:
            raise ValueError("the detector config names no method: restore `method` in config.json (or refit the detector)")
        banks = {k: v for k, v in config.fitted_shapes.items() if k.startswith(REFERENCE_BANK_PREFIX)}
        fitted = {k: v for k, v in config.fitted_shapes.items() if k not in banks}
        try:
            self.detector: DetectorModule = build_detector_module(
                config.method, dict(config.method_settings), fitted, config.fitted_dtypes
            )
        except KeyError as err:
            raise ImportError(err.args[0]) from None
        self.references = allocate_buffers(nn.Module(), banks, config.fitted_dtypes)  # allocated before the weights are read
        if adpretrain_model is None:
            self.adpretrain = ADPretrainModel(config.nested_adpretrain_config())
            self.post_init()
        else:  # initialise first, then attach: post_init must never touch fitted weights
            self.post_init()
            self.adpretrain = adpretrain_model

    def _init_weights(self, module: nn.Module) -> None:
        """The detector's fitted state is loaded, never initialised; the feature model's as its own."""
        if not any(module is m for m in self.detector.modules()):
            super()._init_weights(module)

    # -- features ------------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        size = int(self.adpretrain.config.image_size)
        return size, size

    @property
    def layer_positions(self) -> list[int]:
        """0-based positions in the feature model's list of tapped layers that the detector uses."""
        positions = self.config.layer_positions
        return list(positions if positions is not None else range(len(self.adpretrain.config.layers)))

    def extract_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """``pixel_values [B, 3, H, W]`` -> the used layers' maps ``[B, C_l, h_l, w_l]`` (float32).

        The feature model's public steps: ``backbone_features``, then for pretrained features
        ``residuals`` against the stored bank (plain-torch matching, so the graph traces to
        ONNX) and ``project``, on the used layers only.
        """
        model = self.adpretrain
        tokens = model.backbone_features(pixel_values)  # checks the pixels, casts to the model's dtype
        positions = self.layer_positions
        features = [tokens[position] for position in positions]  # [B, N_l, C_l] each
        if self.config.feature_kind == "pretrained":
            banks = [getattr(self.references, f"{REFERENCE_BANK_PREFIX}{position}", None) for position in positions]
            if model.config.needs_references:
                missing = [position for position, bank in zip(positions, banks) if bank is None]
                if missing:
                    raise ValueError(
                        f"the folder holds no reference bank for layer position {missing[0]}: refit with fit_detector(...)"
                    )
            reference_features = None if any(bank is None for bank in banks) else banks
            residuals = model.residuals(features, reference_features, backend=TRACEABLE_BACKEND)
            features = model.project(residuals, reference_features, layer_positions=positions)
        grids = model.grid_sizes
        return [tokens_to_grid(x.float(), grids[position]) for x, position in zip(features, positions)]

    # -- scoring -------------------------------------------------------------------------
    def score(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(anomaly_map [B, H, W], score [B])``: the detector module's forward on the features."""
        return self.detector(self.extract_features(pixel_values), tuple(pixel_values.shape[-2:]))

    # -- forward -------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True) -> Union[AnomalyDetectionOutput, tuple]:
        """Score ``pixel_values [B, 3, H, W]``; calibrated fields are None until :func:`calibrate`."""
        device = next(self.adpretrain.parameters()).device
        anomaly_map, score = self.score(pixel_values.to(device))
        config = self.config
        normalized = label = masks = None
        if config.image_threshold is not None:
            label = score >= config.image_threshold
            low = config.score_min if config.score_min is not None else config.image_threshold
            high = config.score_max if config.score_max is not None else config.image_threshold
            normalized = normalize_scores(score, config.image_threshold, low, high)
        if config.pixel_threshold is not None:
            masks = anomaly_map >= config.pixel_threshold
        output = AnomalyDetectionOutput(anomaly_map, score, normalized, label, masks)
        return output if return_dict else output.to_tuple()

    # -- checks --------------------------------------------------------------------------
    def check_fitted(self) -> None:
        """Every fitted tensor present and finite, and finite thresholds, else a one-line error."""
        self.detector.check_fitted()
        for name, bank in self.references.named_buffers():
            check_finite(bank, f"the reference bank {name!r}", "refit the detector (the saved state is broken)")
        self.config.check_calibration()

    # -- persistence ---------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        """Config (method, settings, provenance, calibration), safetensors (feature model +
        fitted tensors, the structure in its metadata), the image processor, the modeling code and
        the ``anomaly-detection`` pipeline code (Hub layout), so the folder also runs with
        ``trust_remote_code=True`` where the package is not installed.

        Atomic like ``ADPretrainModel.save_pretrained``: written into a hidden sibling folder that
        replaces ``save_directory`` in one rename; files of an earlier detector do not survive.
        """
        push_to_hub = kwargs.pop("push_to_hub", False)
        self.check_fitted()

        def write(folder: str) -> None:
            ADPretrainPreTrainedModel.save_pretrained(self, folder, *args, **kwargs)
            add_structure_metadata(folder, self.config)
            processor_for(self, warn_missing=False).save_pretrained(folder)  # the one it was loaded / fitted with
            save_task_pipeline(folder, ANOMALY_DETECTION_TASK)  # the pipeline code registration serves

        save_folder(self, save_directory, write, push_to_hub, kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a detector folder / Hub repo, refusing one whose config differs from the structure
        its weights were saved with, or that lacks a tensor or holds a non-finite one (one-line
        errors naming it); keeps its ``preprocessor_config.json`` for ``processor_for``."""
        want_info = kwargs.pop("output_loading_info", False)
        config = kwargs.get("config")
        if not isinstance(config, PretrainedConfig):  # AutoModel passes the (possibly remote-code) config object
            config = cls.config_class.from_pretrained(config or pretrained_model_name_or_path, **hub_download_kwargs(kwargs))
        header = checkpoint_header(pretrained_model_name_or_path, kwargs)  # (shapes, saved structure) or None
        mismatch = structure_mismatch(header[1], config) if header else None
        if mismatch:
            raise ValueError(
                f"detector folder {pretrained_model_name_or_path} was saved with another structure: {mismatch}. "
                "Restore that field in config.json (or refit the detector)"
            )
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # missing/unexpected keys are reported below, as one error
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        missing = list(info.get("missing_keys") or [])
        if missing:
            raise ValueError(
                f"detector folder {pretrained_model_name_or_path} lacks the tensor {missing[0]!r}"
                f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: the weights file is incomplete; "
                "save or download the folder again (or refit the detector)"
            )
        model.check_fitted()
        keep_saved_processor(model, pretrained_model_name_or_path, kwargs)
        return (model, info) if want_info else model


ADPretrainDetectorModel.register_for_auto_class("AutoModel")
