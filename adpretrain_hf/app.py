"""The inspection page: a fitted detector folder served as a local Gradio page (``adpretrain app``).

A person drops or picks an image and sees the anomaly map over it (colour bar, mask contour),
the raw score and the label under an image threshold they can move; a second tab scores an
uploaded folder into a table with a CSV download. Moving a threshold re-labels the cached
results (the last image, the last folder) without running the model again.

Offline by construction: gradio is imported lazily (the package works without the ``app``
extra); analytics are off, no share link, no server-side rendering, the default theme's fonts
are bundled, and the server binds to 127.0.0.1 unless told otherwise.

Scoring runs through the package's public ``pipeline("anomaly-detection")`` and the overlay
through :func:`adpretrain_hf.overlays.render_overlay`. Shapes: an image ``[H, W, 3]`` uint8,
its anomaly map ``[H, W]`` float32 at the image's own size.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from adpretrain_hf.commands._deploy_io import IMAGE_SUFFIXES, write_csv  # the CLI's readable images (no torch at import)

BATCH_SIZE = 8  # images per pipeline call in the folder tab
SLIDER_STEPS = 200  # slider resolution across its range
SLIDER_PAD = 0.5  # range margin, as a fraction of the span of the known scores and thresholds
IMAGE_HEIGHT = 360  # px of the image and overlay panels (small images are scaled up to it)
CSV_COLUMNS = ("file", "score", "normalized_score", "label", "threshold")
DEFAULT_HOST = "127.0.0.1"  # local only: 0.0.0.0 exposes the page (and its uploads) to the network
DEFAULT_PORT = 7860  # gradio's usual port

# gradio reads these at import: no telemetry, no version check, no share tunnel
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SHARE": "False", "GRADIO_SSR_MODE": "False"}
ANOMALOUS, NORMAL, UNDECIDED = "anomalous", "normal", "no threshold"


@dataclass
class Scored:
    """One image's cached result: enough to re-label and re-draw without the model."""

    name: str
    score: float
    normalized_score: Optional[float]
    anomaly_map: np.ndarray  # [H, W] float32 at the image's size
    image: Optional[np.ndarray] = None  # [H, W, 3] uint8 (single-image tab only)


def label_for(score: float, threshold: Optional[float]) -> str:
    """The detector's rule ``score >= threshold`` as a word; no threshold, no label."""
    if threshold is None:
        return UNDECIDED
    return ANOMALOUS if score >= threshold else NORMAL


def slider_range(values: Sequence[Optional[float]]) -> tuple[float, float, float]:
    """``(minimum, maximum, step)`` covering the known scores/thresholds with a margin."""
    known = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not known:
        return 0.0, 1.0, 1.0 / SLIDER_STEPS
    low, high = min(known), max(known)
    span = (high - low) or abs(high) or 1.0
    step = 10.0 ** math.floor(math.log10((1.0 + 2.0 * SLIDER_PAD) * span / SLIDER_STEPS))  # a round step
    low = math.floor((low - SLIDER_PAD * span) / step) * step
    high = math.ceil((high + SLIDER_PAD * span) / step) * step
    return round(low, 12), round(high, 12), step


def colour_scale(anomaly_map: np.ndarray, pixel_threshold: Optional[float]) -> tuple[float, float]:
    """``(vmin, vmax)`` of an overlay: the map's own range, stretched so that a known pixel threshold
    sits at or below the middle of the colour bar. A normal image then stays cool (blue-green)
    and only regions above the threshold turn hot; without a threshold, the map's min/max."""
    vmin, vmax = float(anomaly_map.min()), float(anomaly_map.max())
    if pixel_threshold is not None:
        vmin = min(vmin, pixel_threshold)
        vmax = max(vmax, 2.0 * pixel_threshold - vmin)
    return vmin, max(vmax, vmin + 1e-6)


class Inspector:
    """The page's logic without gradio: score (model call) and re-label/re-draw (no model call).

    ``detect`` is a ``pipeline("anomaly-detection")`` (anything with its call signature and a
    ``model.config`` works). ``threshold`` overrides the detector's calibrated image threshold.
    """

    def __init__(self, detect: Any, threshold: Optional[float] = None) -> None:
        self.detect = detect
        self.config = detect.model.config
        self.threshold = float(threshold) if threshold is not None else self.config.image_threshold
        self.pixel_threshold = self.config.pixel_threshold

    def describe(self) -> str:
        """One markdown paragraph on the detector (method, features, calibration)."""
        calibration = self.config.calibration or "none (pass --threshold or move the slider)"
        pixel = "none" if self.pixel_threshold is None else f"{self.pixel_threshold:.4g}"
        image = "none" if self.threshold is None else f"{self.threshold:.4g}"
        return (f"**Detector** `{self.config.method}` on `{self.config.feature_kind}` features · calibration: "
                f"{calibration} · image threshold {image} · mask contour at map ≥ {pixel}")

    def _run(self, inputs: list) -> list[dict]:
        return self.detect(inputs, batch_size=BATCH_SIZE, return_tensors="np")

    def score_image(self, image: Any, name: str = "image") -> Scored:
        """Run the model on one PIL image / ``[H, W, 3]`` array and cache what re-drawing needs."""
        from PIL import Image

        rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
        (result,) = self._run([Image.fromarray(rgb)])
        return Scored(name, float(result["score"]), _optional_float(result["normalized_score"]),
                      np.asarray(result["anomaly_map"], dtype=np.float32), rgb)

    def score_files(self, paths: Sequence[str]) -> list[Scored]:
        """Run the model on image files (other files skipped); maps kept, images not."""
        images = sorted((Path(p) for p in paths if Path(p).suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name)
        if not images:
            raise ValueError(f"none of the {len(paths)} uploaded files is an image ({', '.join(IMAGE_SUFFIXES)}): "
                             "upload a folder of images")
        results = self._run([str(p) for p in images])
        return [Scored(p.name, float(r["score"]), _optional_float(r["normalized_score"]),
                       np.asarray(r["anomaly_map"], dtype=np.float32)) for p, r in zip(images, results)]

    def overlay(self, scored: Scored, pixel_threshold: Optional[float] = None) -> Any:
        """The heatmap over the image with a colour bar and the ``map >= pixel_threshold`` contour (PIL)."""
        from adpretrain_hf.overlays import render_overlay

        pixel = self.pixel_threshold if pixel_threshold is None else pixel_threshold
        mask = None if pixel is None else scored.anomaly_map >= pixel
        vmin, vmax = colour_scale(scored.anomaly_map, pixel)
        return render_overlay(scored.image, scored.anomaly_map, vmin=vmin, vmax=vmax, pred_mask=mask)

    def verdict(self, scored: Scored, threshold: Optional[float]) -> str:
        """Markdown: score, threshold, label (the rule that made it)."""
        label = label_for(scored.score, threshold)
        rule = "no image threshold: move the slider" if threshold is None else f"score {'≥' if label == ANOMALOUS else '<'} {threshold:.4g}"
        normalized = "" if scored.normalized_score is None else f" · normalized {scored.normalized_score:.3f} (calibrated threshold at 0.5)"
        return f"## {label.upper()}\n**Score** {scored.score:.4g} ({rule}){normalized}"

    def table(self, rows: Sequence[Scored], threshold: Optional[float]) -> list[list]:
        """One row per image: ``CSV_COLUMNS``, labelled under ``threshold``."""
        return [[r.name, round(r.score, 6), None if r.normalized_score is None else round(r.normalized_score, 6),
                 label_for(r.score, threshold), threshold] for r in rows]

    def write_csv(self, rows: Sequence[Scored], threshold: Optional[float], folder: str) -> str:
        """``predictions.csv`` of ``table`` in ``folder``; returns its path."""
        path = os.path.join(folder, "predictions.csv")
        write_csv(Path(path), CSV_COLUMNS, [["" if v is None else v for v in row] for row in self.table(rows, threshold)])
        return path


def _optional_float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def build_app(inspector: Inspector) -> Any:
    """The ``gr.Blocks`` page around ``inspector`` (not launched)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    import gradio as gr

    scratch = tempfile.mkdtemp(prefix="adpretrain-app-")
    config = inspector.config
    low, high, step = slider_range([inspector.threshold, config.score_min, config.score_max, inspector.pixel_threshold])

    def slider_update(values: Sequence[Optional[float]]) -> Any:
        """A slider's range widened to cover newly seen values (its value is left alone)."""
        lo, hi, st = slider_range([*values, config.score_min, config.score_max, inspector.pixel_threshold])
        return gr.Slider(minimum=lo, maximum=hi, step=st)

    def active(value, by_hand, calibrated):
        """The slider's value once moved by hand, else the calibrated one (None when uncalibrated)."""
        return value if by_hand else calibrated

    def on_image(image, threshold, pixel, threshold_set, pixel_set):
        if image is None:
            return None, "", None, gr.Slider(), gr.Slider()
        scored = inspector.score_image(image)
        image_threshold = active(threshold, threshold_set, inspector.threshold)
        pixel_threshold = active(pixel, pixel_set, inspector.pixel_threshold)
        extremes = [float(scored.anomaly_map.min()), float(scored.anomaly_map.max())]
        return (inspector.overlay(scored, pixel_threshold), inspector.verdict(scored, image_threshold), scored,
                slider_update([scored.score, image_threshold]), slider_update([*extremes, pixel_threshold]))

    def on_threshold(threshold, pixel, threshold_set, pixel_set, scored, rows):
        """A slider moved: re-label and re-draw the cached results (no model call)."""
        image_threshold = active(threshold, threshold_set, inspector.threshold)
        overlay = verdict = None
        if scored is not None:
            overlay = inspector.overlay(scored, active(pixel, pixel_set, inspector.pixel_threshold))
            verdict = inspector.verdict(scored, image_threshold)
        table = inspector.table(rows, image_threshold) if rows else None
        csv_path = inspector.write_csv(rows, image_threshold, scratch) if rows else None
        return overlay, verdict or "", table, csv_path

    def on_folder(files, threshold, threshold_set):
        if not files:
            return None, None, None
        try:
            rows = inspector.score_files([getattr(f, "name", f) for f in files])
        except (ValueError, OSError) as err:
            raise gr.Error(str(err)) from None
        image_threshold = active(threshold, threshold_set, inspector.threshold)
        return inspector.table(rows, image_threshold), inspector.write_csv(rows, image_threshold, scratch), rows

    with gr.Blocks(title="ADPretrain inspection", analytics_enabled=False) as demo:
        gr.Markdown("# ADPretrain inspection\n" + inspector.describe())
        threshold_set, pixel_set = gr.State(False), gr.State(False)  # True once that slider is moved by hand
        with gr.Row():
            threshold = gr.Slider(low, high, value=inspector.threshold if inspector.threshold is not None else high,
                                  step=step, label="Image threshold (raw score; score ≥ threshold is anomalous)",
                                  elem_id="threshold")
            pixel = gr.Slider(low, high, value=inspector.pixel_threshold if inspector.pixel_threshold is not None else high,
                              step=step, label="Mask threshold (anomaly-map value drawn as the white contour)",
                              elem_id="pixel-threshold")
        with gr.Tab("Image"):
            with gr.Row():
                image = gr.Image(type="pil", label="Image (drop, pick or paste)", sources=["upload", "clipboard"],
                                 height=IMAGE_HEIGHT, elem_id="image-input")
                overlay = gr.Image(type="pil", label="Anomaly map overlay", interactive=False, format="png",
                                   height=IMAGE_HEIGHT, elem_id="overlay")
            verdict = gr.Markdown(elem_id="verdict")
            scored = gr.State(None)
        with gr.Tab("Folder"):
            folder = gr.File(file_count="directory", label="Folder of images", elem_id="folder-input")
            table = gr.Dataframe(headers=list(CSV_COLUMNS), label="Scores", interactive=False, elem_id="batch-table")
            csv_file = gr.File(label="predictions.csv", interactive=False, elem_id="batch-csv")
            rows = gr.State(None)

        image.change(on_image, [image, threshold, pixel, threshold_set, pixel_set], [overlay, verdict, scored, threshold, pixel])
        folder.change(on_folder, [folder, threshold, threshold_set], [table, csv_file, rows])
        relabel_inputs = [threshold, pixel, threshold_set, pixel_set, scored, rows]
        for slider, flag in ((threshold, threshold_set), (pixel, pixel_set)):
            # input: moved by hand (drag, keys, typed number), never by a range update; the latest value wins
            slider.input(lambda: True, None, flag, trigger_mode="always_last").then(
                on_threshold, relabel_inputs, [overlay, verdict, table, csv_file], trigger_mode="always_last")
    demo.adpretrain_scratch = scratch
    return demo


def launch_app(detector: str, *, threshold: Optional[float] = None, host: str = DEFAULT_HOST,
               port: int = DEFAULT_PORT, device: Optional[str] = None, exported: Any = None, block: bool = True) -> Any:
    """Load ``detector`` (a folder written by ``adpretrain fit``), build the page and serve it.

    ``exported``: an ``ExportedDetector`` of the detector's exported graph to score with instead of
    torch (the pipeline's ``exported=``).

    ``block=False`` returns the running ``gr.Blocks`` (``.close()`` stops it): tests and notebooks.
    """
    from transformers import pipeline

    import adpretrain_hf
    from adpretrain_hf.modeling.tasks_adpretrain import ANOMALY_DETECTION_TASK

    adpretrain_hf.register()
    detect = pipeline(ANOMALY_DETECTION_TASK, model=str(detector), device=device, exported=exported)
    demo = build_app(Inspector(detect, threshold))
    demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, mcp_server=False,
                inbrowser=False, prevent_thread_lock=not block, quiet=True, show_error=True)
    return demo


__all__ = ["Inspector", "Scored", "build_app", "launch_app", "label_for", "slider_range", "colour_scale"]
