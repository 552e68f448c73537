"""Saving and rebuilding a fitted trained detector (CFLOW, GLASS, UniAD).

A fitted detector is its settings (method config, fitted layer layout, sigma, layer positions,
training history) plus its network's state dict, which also carries the fit-time constants
(CFLOW's normalisers, GLASS's centre) as buffers. ``export_state()`` / ``from_state()``
hand these to ``ADPretrainDetectorModel``; ``save(dir)`` / ``load(dir, extractor)`` write
and read them as ``detector.safetensors`` + ``detector_config.json``. A rebuilt detector's
``predict`` is bit-identical to the one that was saved. Separate from the training loop
(``trained.py``) because loading never trains.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from .trained_config import TrainingHistory

if TYPE_CHECKING:  # the mixin is only ever used through TrainedDetector
    from accelerate import Accelerator

    from .base import FeatureExtractor
    from .trained import TrainedDetector

CONFIG_FILE = "detector_config.json"
WEIGHTS_FILE = "detector.safetensors"
FORMAT_VERSION = 1
OLD_SETTINGS_KEY = "layers"  # what "layer_positions" was saved as before issue 14's rename; still read


class SavesTrainedState:
    """Mixin of :class:`~adpretrain_hf.detectors.trained.TrainedDetector`: export, rebuild, save, load.

    Relies on the detector's ``config``, ``layer_shapes``, ``history``, ``model``,
    ``accelerator`` and ``_build_model()`` (which must rebuild the network from
    ``layer_shapes`` and ``config`` alone).
    """

    def export_state(self: "TrainedDetector") -> tuple[dict, dict[str, torch.Tensor]]:
        """Settings (method config, fitted layout, sigma, history) and the network's weights
        plus fit-time constants (its state dict, on the CPU)."""
        if not self.is_fitted or self.model is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(normal_images) first")
        settings = {
            "detector": self.name,
            "format_version": FORMAT_VERSION,
            "config": asdict(self.config),
            "layer_shapes": [list(s) for s in self.layer_shapes],
            "sigma": self.sigma,
            "batch_size": self.batch_size,
            "layer_positions": getattr(self, "layer_positions", None),
            "history": {"epoch_losses": self.history.epoch_losses, "val_losses": self.history.val_losses,
                        "best_epoch": self.history.best_epoch},
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return settings, state

    @classmethod
    def from_state(
        cls, extractor: "FeatureExtractor", settings: dict[str, Any], state: dict[str, torch.Tensor], *,
        layer_positions: list[int] | None = None, progress: bool = False, accelerator: "Accelerator | None" = None,
    ) -> "TrainedDetector":
        """Inverse of :meth:`export_state`: a fitted detector whose ``predict`` is bit-identical.

        ``layer_positions`` (for detectors with ``layer_positions=``) picks positions in the
        extractor's list of maps; default: the ones chosen at fit (``settings["layer_positions"]``,
        or ``settings["layers"]`` in states saved before the rename, else the class default).
        """
        if settings.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"this detector was saved by a newer adpretrain_hf (format {settings['format_version']}): upgrade the package")
        if settings.get("detector") != cls.name:
            raise ValueError(f"the state holds a {settings.get('detector')!r} detector, not {cls.name!r}: load it with its own class")
        config = cls.config_class.from_dict(settings["config"])
        if layer_positions is None:
            layer_positions = settings.get("layer_positions", settings.get(OLD_SETTINGS_KEY))
        choice = {} if layer_positions is None else {"layer_positions": layer_positions}
        det = cls(extractor, config, batch_size=settings["batch_size"], sigma=settings["sigma"], progress=progress,
                  accelerator=accelerator, **choice)
        det.layer_shapes = [tuple(s) for s in settings["layer_shapes"]]
        history = settings.get("history", {})
        det.history = TrainingHistory(epoch_losses=history.get("epoch_losses", []), val_losses=history.get("val_losses", []),
                                      best_epoch=history.get("best_epoch"))
        model = det._build_model()
        model.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
        det.model = det.accelerator.unwrap_model(det.accelerator.prepare(model))
        det.model.eval()
        det.is_fitted = True
        return det

    def save(self: "TrainedDetector", directory: str | os.PathLike) -> None:
        """Write ``detector.safetensors`` (weights + fit-time constants) and ``detector_config.json``."""
        settings, state = self.export_state()
        os.makedirs(directory, exist_ok=True)
        save_file(state, os.path.join(directory, WEIGHTS_FILE), metadata={"detector": self.name})
        with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as fh:
            json.dump(settings, fh, indent=2)

    @classmethod
    def load(
        cls, directory: str | os.PathLike, extractor: "FeatureExtractor", *, progress: bool = True,
        accelerator: "Accelerator | None" = None,
    ) -> "TrainedDetector":
        """Rebuild a detector saved by :meth:`save`; the extractor must give the fit-time layout."""
        path = os.path.join(directory, CONFIG_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}: save a fitted detector there first")
        with open(path, encoding="utf-8") as fh:
            settings = json.load(fh)
        state = load_file(os.path.join(directory, WEIGHTS_FILE))
        return cls.from_state(extractor, settings, state, progress=progress, accelerator=accelerator)
