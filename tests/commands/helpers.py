"""Images for the deploy commands' tests (fit, predict, export, their shared input/output)."""

import numpy as np
from PIL import Image

SIZE = 64  # tiny-clip's input size


def _normal(rng, size=(SIZE, SIZE)):
    """A flat grey part with mild noise: what the detector learns as normal."""
    return (np.full((*size, 3), 110, np.uint8) + rng.integers(0, 25, (*size, 3), dtype=np.uint8))


def _defect(rng, box=(20, 40, 20, 40), size=(SIZE, SIZE)):
    image = _normal(rng, size)
    top, bottom, left, right = box
    image[top:bottom, left:right] = 255
    return image


def _save(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
