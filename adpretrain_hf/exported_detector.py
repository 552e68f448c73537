"""Run an exported detector graph (ONNX or OpenVINO IR) the way a production line does: image by image.

:class:`ExportedDetector` loads the graph that :mod:`adpretrain_hf.export` wrote and maps
processed ``pixel_values [B, 3, H, W]`` to ``(anomaly_map [B, H, W], score [B])`` with numpy,
onnxruntime or OpenVINO (nothing in the call runs torch): what an inspection station needs.

Why image by image (``micro_batch=1``, the default): measured on EfficientNet-Lite0 at 224 px
(pretrained PatchCore, bank 6272 x 176, 1 thread; ``benchmarks/latency.py``), one call on a batch
of 16 costs more time per image *and* far more memory than 16 calls of one image:

- OpenVINO's CPU plugin keeps a buffer of its own for every tensor of dynamic shape, so the
  searches' ``[queries, chunk]`` blocks all stay allocated: +5.3 GB for a dynamic batch of 16
  (347 ms per image), +176 MB compiled for a static 16 (244 ms), +12 MB for a static 1 (116 ms).
  So the IR is compiled here with a *static* batch of ``micro_batch`` (the exported IR keeps its
  dynamic batch for other uses).
- onnxruntime's arena grows with the largest batch it has seen: +1.9 GB at 16 (368 ms per image),
  +76 MB at 1 (205 ms).

A last group smaller than ``micro_batch`` is padded with zeros for a graph of static batch and the
padding's outputs are dropped (images do not interact in the graph).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

__all__ = [
    "DEFAULT_MICRO_BATCH", "EXPORT_NAMES", "RUNTIMES", "ExportedDetector", "exported_graph_in", "onnx_session",
    "openvino_compiled", "openvino_xml", "require_openvino", "runtime_of",
]

INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("anomaly_map", "score")  # the detector output's field names: [B, H, W], [B]
OPENVINO_XML = "model.xml"  # the IR's graph; its weights are model.bin beside it
OPENVINO_PRECISION = "f32"  # inference precision hint: the calibration's precision, not the CPU's bf16 default
DEFAULT_MICRO_BATCH = 1  # images per graph call: fastest and smallest on both runtimes (module docstring)
EXPORT_NAMES = {"onnx": "model.onnx", "openvino": "openvino"}  # where `adpretrain export` writes inside a detector folder
RUNTIMES = tuple(EXPORT_NAMES)  # the runtimes an exported graph runs in (= the export formats)
DETECTOR_WEIGHTS = "model.safetensors"  # the fitted detector's tensors: a graph older than them is stale


def openvino_xml(path: Union[str, os.PathLike]) -> Path:
    """An OpenVINO IR's graph file: ``path`` itself, or ``path/model.xml`` for its folder."""
    path = Path(path)
    return path / OPENVINO_XML if path.is_dir() else path


def exported_graph_in(detector_folder: Union[str, os.PathLike], runtime: str) -> Path:
    """The graph ``adpretrain export --format RUNTIME`` wrote into ``detector_folder`` by default.

    Refuses a missing graph and one older than the folder's weights (a detector fitted again into
    the same folder after its export would otherwise be scored by the old graph).
    """
    if runtime not in EXPORT_NAMES:
        raise ValueError(f"unknown runtime {runtime!r}: choose one of {tuple(EXPORT_NAMES)}")
    folder = Path(detector_folder)
    graph = folder / EXPORT_NAMES[runtime]
    fix = f"export it: adpretrain export --detector {folder} --format {runtime}"
    if not graph.exists():
        raise FileNotFoundError(f"{folder} has no exported {runtime} graph ({graph} is missing): {fix}")
    weights = folder / DETECTOR_WEIGHTS
    written = openvino_xml(graph).stat().st_mtime  # a .onnx file is its own graph file
    if weights.is_file() and written < weights.stat().st_mtime:
        raise ValueError(f"{graph} is older than {weights}: the detector was fitted again after its export; {fix}")
    return graph


def runtime_of(path: Union[str, os.PathLike]) -> str:
    """``"onnx"`` for a ``.onnx`` file, ``"openvino"`` for an IR folder or its ``model.xml``."""
    path = Path(path)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path}: write one with `adpretrain export --format onnx`")
        return "onnx"
    xml = openvino_xml(path)
    if xml.suffix == ".xml" and xml.is_file():
        return "openvino"
    raise FileNotFoundError(
        f"no exported detector at {path}: give a .onnx file or an OpenVINO folder with {OPENVINO_XML} "
        "(write one with `adpretrain export`)"
    )


def onnx_session(path: Union[str, os.PathLike], threads: Optional[int] = None):
    """An ``onnxruntime.InferenceSession`` on the CPU (``threads`` intra-op threads, default: ORT's)."""
    try:
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover - onnxruntime is installed where export is used
        raise ImportError("running an ONNX export needs onnxruntime: pip install onnxruntime") from err
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def require_openvino():
    """The ``openvino`` module, or an ImportError that says how to install it."""
    try:
        import openvino
    except ImportError as err:
        raise ImportError("OpenVINO export needs openvino: pip install 'adpretrain-hf[export]' (or pip install openvino)") from err
    return openvino


def openvino_compiled(path: Union[str, os.PathLike], threads: Optional[int] = None, batch_size: Optional[int] = None):
    """The IR at ``path`` (``model.xml`` or its folder) compiled for the CPU in float32.

    ``batch_size``: compile for this static batch (OpenVINO's CPU plugin is faster and far smaller
    with static shapes; see the module docstring); None keeps the IR's batch dimension.
    ``threads``: inference threads (default: OpenVINO's). Call the result with
    ``{"pixel_values": array}`` or the array.
    """
    ov = require_openvino()
    xml = openvino_xml(path)
    if not xml.is_file():
        raise FileNotFoundError(f"no OpenVINO model at {xml}: write one with export_openvino(detector, folder)")
    core = ov.Core()
    return _compile(core, core.read_model(str(xml)), xml, threads, batch_size)


def _fixed_batch(model: Any) -> Optional[int]:
    """The batch an IR was exported for, or None for a dynamic batch."""
    first = model.input(INPUT_NAME).get_partial_shape()[0]
    return first.get_length() if first.is_static else None


def _compile(core: Any, model: Any, xml: Path, threads: Optional[int], batch_size: Optional[int]):
    """``model`` (read from ``xml``) compiled for the CPU in float32, reshaped to a static ``batch_size``."""
    if batch_size is not None:
        fixed = _fixed_batch(model)
        if fixed is not None and fixed != batch_size:
            raise ValueError(f"{xml} was exported for batch {fixed}, not {batch_size}: export it again with a dynamic batch")
        shape = model.input(INPUT_NAME).get_partial_shape()
        model.reshape({INPUT_NAME: [batch_size, *(dim.get_length() for dim in list(shape)[1:])]})
    config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(model, "CPU", config)


class ExportedDetector:
    """An exported detector graph as ``pixel_values -> (anomaly_map, score)``, fed ``micro_batch``
    images per call (see the module docstring for why one).

    Args:
        path: a ``.onnx`` file, or an OpenVINO folder (or its ``model.xml``).
        threads: the runtime's inference threads (default: the runtime's own).
        micro_batch: images per graph call; None: the graph's fixed batch if it has one, else
            :data:`DEFAULT_MICRO_BATCH`.
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None, micro_batch: Optional[int] = None) -> None:
        self.path = Path(path)
        self.runtime = runtime_of(self.path)
        if micro_batch is not None and micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        if self.runtime == "onnx":
            self._session = onnx_session(self.path, threads)
            shape = self._session.get_inputs()[0].shape  # [batch or its name, 3, H, W]
            self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
            self.input_shape = tuple(shape[1:])
        else:
            core, xml = require_openvino().Core(), openvino_xml(self.path)
            model = core.read_model(str(xml))  # read once: its shapes here, then compiled below
            self.fixed_batch = _fixed_batch(model)
            self.input_shape = tuple(dim.get_length() for dim in list(model.input(INPUT_NAME).get_partial_shape())[1:])
        if micro_batch is not None and self.fixed_batch is not None and micro_batch != self.fixed_batch:
            raise ValueError(
                f"{self.path} was exported for batch {self.fixed_batch}, not micro_batch={micro_batch}: "
                "leave micro_batch unset or export with a dynamic batch"
            )
        self.micro_batch = self.fixed_batch or micro_batch or DEFAULT_MICRO_BATCH
        self.pads = self.runtime == "openvino" or self.fixed_batch is not None  # static batch: pad the last group
        if self.runtime == "openvino":
            self._compiled = _compile(core, model, xml, threads, batch_size=self.micro_batch)

    def _run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.runtime == "onnx":
            maps, scores = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
            return maps, scores
        result = self._compiled({INPUT_NAME: pixels})
        return tuple(result[self._compiled.output(name)] for name in OUTPUT_NAMES)  # type: ignore[return-value]

    def _checked(self, pixel_values: Any) -> np.ndarray:
        pixels = pixel_values.detach().cpu().numpy() if hasattr(pixel_values, "detach") else np.asarray(pixel_values)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != self.input_shape:
            raise ValueError(
                f"the exported graph takes pixel_values [batch, {', '.join(map(str, self.input_shape))}], got "
                f"{list(pixels.shape)}: process the images with the detector's image processor first"
            )
        return np.ascontiguousarray(pixels, dtype=np.float32)

    def __call__(self, pixel_values: Any) -> tuple[np.ndarray, np.ndarray]:
        """``pixel_values [B, 3, H, W]`` (numpy or torch) -> ``(anomaly_map [B, H, W], score [B])``, float32."""
        pixels = self._checked(pixel_values)
        count = pixels.shape[0]
        if count == 0:
            return np.zeros((0, *self.input_shape[1:]), np.float32), np.zeros(0, np.float32)
        maps, scores = [], []
        for start in range(0, count, self.micro_batch):
            group = pixels[start : start + self.micro_batch]
            real = group.shape[0]
            if self.pads and real < self.micro_batch:
                group = np.concatenate([group, np.zeros((self.micro_batch - real, *group.shape[1:]), np.float32)])
            group_maps, group_scores = self._run(group)
            maps.append(np.asarray(group_maps)[:real])
            scores.append(np.asarray(group_scores)[:real])
        return np.concatenate(maps), np.concatenate(scores)

    def __repr__(self) -> str:
        return f"ExportedDetector({str(self.path)!r}, runtime={self.runtime!r}, micro_batch={self.micro_batch})"
