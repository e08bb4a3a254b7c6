"""The model cards' image preprocessing, as they run it (PIL tiling, then torchvision's Resize,
ToTensor and Normalize per tile), written with PIL, numpy and torch only: PyPI's torchvision
breaks beside this machine's torch. The yardstick for vlmq's own pipeline, in tests and benchmarks.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from workers.inference.runtime.tiling import candidate_grids

SIZE = 448
MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)


def _closest_grid(width: int, height: int, max_tiles: int) -> tuple[int, int]:
    aspect, best, best_difference = width / height, (1, 1), float("inf")
    for cols, rows in candidate_grids(max_tiles):
        difference = abs(aspect - cols / rows)
        if difference < best_difference:
            best, best_difference = (cols, rows), difference
        elif difference == best_difference and width * height > 0.5 * SIZE * SIZE * cols * rows:
            best = (cols, rows)
    return best


def _tiles(image: Image.Image, max_tiles: int) -> list[Image.Image]:
    cols, rows = _closest_grid(image.width, image.height, max_tiles)
    resized = image.resize((SIZE * cols, SIZE * rows))  # Pillow's default for RGB: bicubic
    tiles = [resized.crop((c * SIZE, r * SIZE, (c + 1) * SIZE, (r + 1) * SIZE)) for r in range(rows) for c in range(cols)]
    if len(tiles) > 1:
        tiles.append(image.resize((SIZE, SIZE)))
    return tiles


def _transform(tile: Image.Image) -> torch.Tensor:
    tile = tile.convert("RGB") if tile.mode != "RGB" else tile
    tile = tile.resize((SIZE, SIZE), Image.Resampling.BICUBIC)  # Resize((448, 448), BICUBIC)
    tensor = torch.from_numpy(np.array(tile, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()  # ToTensor
    tensor = tensor.float().div(255)
    return tensor.sub(MEAN).div(STD)  # Normalize


def reference_pixel_values(data: bytes, max_tiles: int = 12) -> torch.Tensor:
    """[tiles, 3, 448, 448] from an image file's bytes, the cards' way."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return torch.stack([_transform(tile) for tile in _tiles(image, max_tiles)])
