"""The runtime under GPU memory pressure. Nothing here can run out of GPU memory, so the model's
vision tower is made to raise torch's own OutOfMemoryError — the one stand-in in these tests."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from workers.inference.runtime.model import InternVLRuntime
from workers.inference.runtime.requests import GenerationRequest


@pytest.fixture(scope="module")
def runtime(tiny_model_dir):
    return InternVLRuntime.load(tiny_model_dir)


def _out_of_memory_while_tiles_exceed(runtime, limit: int, monkeypatch) -> list[int]:
    """The vision tower raises OutOfMemoryError while it is given more than ``limit`` tiles;
    returns the tile counts it was called with."""
    real, seen = runtime.model.model.get_image_features, []

    def get_image_features(*args, pixel_values, **kwargs):
        seen.append(len(pixel_values))
        if len(pixel_values) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, pixel_values=pixel_values, **kwargs)

    monkeypatch.setattr(runtime.model.model, "get_image_features", get_image_features)
    return seen


def test_out_of_memory_is_retried_with_fewer_tiles(runtime, monkeypatch):
    # given a 13-tile request (a 4:3 image: 4×3 grid and a thumbnail) on a GPU that only fits 5 tiles
    seen = _out_of_memory_while_tiles_exceed(runtime, 5, monkeypatch)
    request = GenerationRequest("caption", None, [Image.new("RGB", (1600, 1200), "red")], max_tiles=12, max_new_tokens=2)

    # when it runs
    (result,) = runtime.run([request])

    # then it was retried with half the tile budget each time until it fit
    assert seen[0] > 5 and seen[-1] <= 5 and result.tiles == seen[-1]
    assert len(seen) <= 4


def test_out_of_memory_even_at_one_tile_is_raised(runtime, monkeypatch):
    _out_of_memory_while_tiles_exceed(runtime, 0, monkeypatch)
    request = GenerationRequest("caption", None, [Image.new("RGB", (800, 600), "red")], max_tiles=2, max_new_tokens=2)
    with pytest.raises(torch.OutOfMemoryError):
        runtime.run([request])
