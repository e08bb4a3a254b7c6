"""vlmq's image preprocessing gives the cards' pixel values (within 1e-5; in fact bit for bit), on
JPEGs from 640×480 to 4K and tile budgets of 1 to 12."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.support.reference_preprocess import reference_pixel_values
from workers.inference.runtime.tiling import image_to_pixel_values


def photo_like_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A gradient with noise, saved as a JPEG: every uint8 value and real chroma subsampling."""
    rng = np.random.default_rng(seed)
    gradient = np.add.outer(np.linspace(0, 200, height), np.linspace(0, 55, width))[..., None]
    pixels = (gradient + rng.integers(0, 56, (height, width, 3))).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize(("width", "height", "max_tiles"), [
    (640, 480, 12), (1920, 1080, 12), (3840, 2160, 12), (1000, 300, 6), (300, 1000, 12), (512, 512, 1),
])
def test_pixel_values_equal_the_reference_pipeline(width, height, max_tiles):
    data = photo_like_jpeg(width, height)
    # when both pipelines turn the same file into pixel values
    expected = reference_pixel_values(data, max_tiles).numpy()
    with Image.open(io.BytesIO(data)) as image:
        got = image_to_pixel_values(image.convert("RGB"), max_tiles)
    # then the tiles, their order and every value agree
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5
