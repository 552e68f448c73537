"""benchmarks/big_image_memory.py: one 12000 x 12000 PNG through `adpretrain predict` stays within the stated
peak-RSS bound (a fresh process's own ru_maxrss), is scored, and its outputs are at the reader's working size."""

import csv

import pytest
from PIL import Image

from adpretrain_hf.modeling.image_io_adpretrain import WORKING_MAX_SIDE
from benchmarks.big_image_memory import PEAK_RSS_BOUND_MB, make_detector, measure_predict, write_png

SIDE = 12000


@pytest.mark.slow
def test_a_12000_pixel_png_is_scored_within_the_memory_bound(tmp_path):
    detector = make_detector(tmp_path / "detector")
    image = write_png(tmp_path / "big.png", SIDE, SIDE)
    result = measure_predict(detector, image, tmp_path / "out")
    assert result["code"] == 0
    assert result["maxrss_mb"] < PEAK_RSS_BOUND_MB, f"peak RSS {result['maxrss_mb']:.0f} MB"
    (row,) = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert row["label"] in ("0", "1")
    with Image.open(tmp_path / "out" / "overlays" / "big_png.png") as overlay:
        assert max(overlay.size) <= 2 * WORKING_MAX_SIDE  # the reduced image (2000 px) plus colour bar and caption


def test_the_png_writer_writes_what_pil_reads(tmp_path):
    with Image.open(write_png(tmp_path / "x.png", 50, 30)) as image:
        pixels = image.convert("RGB").load()
        assert image.size == (50, 30) and pixels[0, 0] == (120, 120, 120) and pixels[25, 15] == (250, 250, 250)
