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

FeatureNorm, PatchCore and PaDiM score with this folder's code only (remote code works
without ``adpretrain_hf``); CFLOW, GLASS and UniAD need the package for their networks.
The forward pass is plain torch (exact nearest-neighbour search by chunked matmul, no faiss)
so FeatureNorm and PatchCore export to ONNX as they are.

Part of the remote-code bundle.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Optional, Union

import torch
from torch import nn

from .anomaly_map_adpretrain import GAUSSIAN_SIGMA, anomaly_map_from_grids, tokens_to_grid
from .calibration_adpretrain import normalize_scores
from .configuration_detector_adpretrain import PACKAGE_METHODS, ADPretrainDetectorConfig
from .checkpoint_io_adpretrain import keep_saved_processor, save_folder
from .dtypes_adpretrain import stored_dtype
from .image_processing_adpretrain import processor_for
from .matching_adpretrain import TRACEABLE_BACKEND, nearest_neighbors
from .modeling_adpretrain import ADPretrainModel, ADPretrainPreTrainedModel
from .outputs_adpretrain import AnomalyDetectionOutput
from .scoring_adpretrain import (
    PATCHCORE_DIM,
    PATCHCORE_REWEIGHT_NEIGHBORS,
    aggregate_patch_features,
    mahalanobis_distances,
    padim_groups,
    patchcore_image_scores,
)
from .tasks_adpretrain import ANOMALY_DETECTION_TASK, save_task_pipeline

REFERENCE_BANK_PREFIX = "reference_bank_"  # + layer position: [M_l, C_l] backbone tokens of the references
NET_PREFIX = "net__"  # + state-dict key with "." -> "__": a trained method's network


def net_buffer_name(key: str) -> str:
    """A trained network's state-dict key -> a buffer name (buffers cannot hold dots)."""
    if "__" in key:
        raise ValueError(f"state-dict key {key!r} contains '__', which the detector folder reserves: rename the submodule")
    return NET_PREFIX + key.replace(".", "__")


def net_state_key(name: str) -> str:
    """Inverse of :func:`net_buffer_name`."""
    return name[len(NET_PREFIX):].replace("__", ".")


def _package_available() -> bool:
    """True where adpretrain_hf can be imported (its trained detectors live there)."""
    try:
        return importlib.util.find_spec("adpretrain_hf") is not None
    except ImportError:
        return False


class FittedTensors(nn.Module):
    """The fitted tensors as persistent buffers, allocated from ``config.fitted_shapes``
    (so ``from_pretrained`` can build them before the weights are read)."""

    def __init__(self, shapes: dict, dtypes: dict) -> None:
        super().__init__()
        for name, shape in shapes.items():
            self.register_buffer(name, torch.zeros(shape, dtype=stored_dtype(dtypes.get(name, "float32"))))

    def get(self, name: str) -> Optional[torch.Tensor]:
        return self._buffers.get(name)


class ADPretrainDetectorModel(ADPretrainPreTrainedModel):
    """A fitted detector: ``pixel_values [B, 3, H, W]`` -> :class:`AnomalyDetectionOutput`.

    Build one with ``adpretrain_hf.fit_detector(...)`` (or ``detector.to_detector_model()``);
    load one with ``from_pretrained(dir_or_hub_id)``. ``adpretrain_model`` lets the fitting code
    hand over the already-built feature model instead of allocating a second one.
    """

    config_class = ADPretrainDetectorConfig
    base_model_prefix = "adpretrain"
    _keys_to_ignore_on_load_missing = None

    def __init__(self, config: ADPretrainDetectorConfig, adpretrain_model: Optional[ADPretrainModel] = None) -> None:
        super().__init__(config)
        if config.method in PACKAGE_METHODS and not _package_available():
            raise ImportError(
                f"this folder holds a {config.method!r} detector, whose network code lives in the adpretrain_hf package: "
                "pip install adpretrain-hf (FeatureNorm, PatchCore and PaDiM folders load without it)"
            )
        self.fitted = FittedTensors(config.fitted_shapes, config.fitted_dtypes)
        self._trained_detector = None  # CFLOW/GLASS/UniAD, rebuilt from the buffers on first use
        if adpretrain_model is None:
            self.adpretrain = ADPretrainModel(config.nested_adpretrain_config())
            self.post_init()
        else:  # initialise first, then attach: post_init must never touch fitted weights
            self.post_init()
            self.adpretrain = adpretrain_model

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
            banks = [self.fitted.get(f"{REFERENCE_BANK_PREFIX}{position}") for position in positions]
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
    def _setting(self, name: str, default: Any) -> Any:
        return self.config.method_settings.get(name, default)

    def score(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(anomaly_map [B, H, W], score [B])`` of the fitted method."""
        features = self.extract_features(pixel_values)
        size = tuple(pixel_values.shape[-2:])
        sigma = float(self._setting("sigma", GAUSSIAN_SIGMA))
        method = self.config.method
        if method == "featurenorm":
            return anomaly_map_from_grids([f.norm(dim=1) for f in features], size, sigma)
        if method == "patchcore":
            return self._patchcore(features, size, sigma)
        if method == "padim":
            return self._padim(features, size, sigma)
        return self._trained(features, size)

    def _patchcore(self, features: list[torch.Tensor], size: tuple, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        bank = self.fitted.memory_bank.float()  # [M, D]; float32 even when the model was cast to bf16
        emb = aggregate_patch_features(features, int(self._setting("embedding_dim", PATCHCORE_DIM)))  # [B, h, w, D]
        h, w, d = emb.shape[1:]
        flat = emb.reshape(-1, d)
        squared, idx = nearest_neighbors(flat, bank, metric="l2", backend=TRACEABLE_BACKEND)
        dist = squared.sqrt()  # PatchCore scores plain L2 distances
        maps, map_max = anomaly_map_from_grids([dist.reshape(-1, h, w)], size, sigma)
        image_score = self._setting("image_score", "reweighted")
        if image_score == "map_max":
            return maps, map_max
        num_neighbors = int(self._setting("num_neighbors", PATCHCORE_REWEIGHT_NEIGHBORS))
        scores = patchcore_image_scores(
            image_score, dist.reshape(-1, h * w), idx.reshape(-1, h * w), flat.reshape(-1, h * w, d), bank, num_neighbors
        )
        return maps, scores

    def _padim(self, features: list[torch.Tensor], size: tuple, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per group (a layer, or all layers concatenated): Mahalanobis grid ``[B, h_g, w_g]``."""
        grids = []
        for g, emb in enumerate(padim_groups(features, self._setting("mode", "per_layer"))):
            channel_index = self.fitted.get(f"channel_index_{g}")
            if channel_index is not None:
                emb = emb.index_select(1, channel_index)
            mean, factor = self.fitted.get(f"mean_{g}").float(), self.fitted.get(f"cholesky_{g}").float()
            dist = mahalanobis_distances(emb.flatten(2), mean, factor)
            grids.append(dist.reshape(-1, *emb.shape[-2:]))  # [B, h_g, w_g]
        return anomaly_map_from_grids(grids, size, sigma)

    def _trained(self, features: list[torch.Tensor], size: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        detector = self.trained_detector()
        grids = detector._score_grids(features)
        maps, _ = anomaly_map_from_grids(grids, size, detector.sigma)
        return maps, detector._image_scores(maps, grids, features)

    def trained_detector(self) -> Any:
        """The CFLOW/GLASS/UniAD detector rebuilt from the stored network (needs adpretrain_hf)."""
        if self._trained_detector is None:
            detectors = importlib.import_module("adpretrain_hf.detectors")
            state = {net_state_key(k): v for k, v in self.fitted.named_buffers() if k.startswith(NET_PREFIX)}
            cls = detectors.DETECTORS[self.config.method]
            extractor = _DetectorModelExtractor(self)  # already returns exactly the used layers
            positions = list(range(len(self.layer_positions))) if hasattr(cls, "default_last_positions") else None
            self._trained_detector = cls.from_state(
                extractor, dict(self.config.method_settings), state, layer_positions=positions
            )
        return self._trained_detector

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

    # -- persistence ---------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        """Config (method, settings, provenance, calibration), safetensors (feature model +
        fitted tensors), the image processor, the modeling code and the ``anomaly-detection``
        pipeline code (Hub layout), so the folder also runs with ``trust_remote_code=True``
        where the package is not installed.

        Atomic like ``ADPretrainModel.save_pretrained``: written into a hidden sibling folder that
        replaces ``save_directory`` in one rename; files of an earlier detector do not survive.
        """
        push_to_hub = kwargs.pop("push_to_hub", False)

        def write(folder: str) -> None:
            ADPretrainPreTrainedModel.save_pretrained(self, folder, *args, **kwargs)
            processor_for(self, warn_missing=False).save_pretrained(folder)  # the one it was loaded / fitted with
            save_task_pipeline(folder, ANOMALY_DETECTION_TASK)  # the pipeline code registration serves

        save_folder(self, save_directory, write, push_to_hub, kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a detector folder / Hub repo; keeps its ``preprocessor_config.json`` for ``processor_for``."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        keep_saved_processor(model[0] if isinstance(model, tuple) else model, pretrained_model_name_or_path, kwargs)
        return model


class _DetectorModelExtractor:
    """The detector model's features as a ``FeatureExtractor`` for a rebuilt trained detector."""

    kind: str

    def __init__(self, model: ADPretrainDetectorModel) -> None:
        self.model = model
        self.kind = model.config.feature_kind
        self.image_size = model.image_size

    @property
    def device(self) -> torch.device:
        return next(self.model.adpretrain.parameters()).device

    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return self.model.extract_features(pixel_values.to(self.device))


ADPretrainDetectorModel.register_for_auto_class("AutoModel")
