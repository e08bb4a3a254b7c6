"""InternVL dynamic tiling (REFERENCE.md, "Image preprocessing"), with PIL and numpy only."""

from __future__ import annotations

import numpy as np
from PIL import Image

TILE_SIZE = 448
TOKENS_PER_TILE = 256
IMAGENET_MEAN = np.array((0.485, 0.456, 0.406), dtype=np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array((0.229, 0.224, 0.225), dtype=np.float32).reshape(3, 1, 1)


def candidate_grids(max_tiles: int, min_tiles: int = 1) -> list[tuple[int, int]]:
    """Every (cols, rows) with min ≤ cols·rows ≤ max, by area; within an area in the order
    upstream's set of tuples iterates (it never changes the choice when min_tiles is 1)."""
    grids = {
        (cols, rows)
        for n in range(min_tiles, max_tiles + 1)
        for cols in range(1, n + 1)
        for rows in range(1, n + 1)
        if min_tiles <= cols * rows <= max_tiles
    }
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def tile_grid_for(width: int, height: int, max_tiles: int, tile_size: int = TILE_SIZE) -> tuple[int, int]:
    """The (cols, rows) grid whose aspect ratio is closest to the image's.

    On an exact tie the later (larger) grid wins only if the image has more than half the pixels
    that grid would cover.
    """
    aspect = width / height
    best_difference = float("inf")
    best = (1, 1)
    for cols, rows in candidate_grids(max_tiles):
        difference = abs(aspect - cols / rows)
        if difference < best_difference:
            best_difference, best = difference, (cols, rows)
        elif difference == best_difference and width * height > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def tile_count(grid: tuple[int, int]) -> int:
    """Tiles fed to the model for a grid: the cut tiles, plus a thumbnail when there are several."""
    cols, rows = grid
    return cols * rows + (1 if cols * rows > 1 else 0)


def tile_image(image: Image.Image, max_tiles: int, *, use_thumbnail: bool = True) -> list[Image.Image]:
    """Resize to the chosen grid, cut row by row, left to right, then append the thumbnail."""
    image = image.convert("RGB")
    cols, rows = tile_grid_for(image.width, image.height, max_tiles)
    resized = image.resize((TILE_SIZE * cols, TILE_SIZE * rows), Image.Resampling.BICUBIC)
    tiles = [
        resized.crop(
            (
                (index % cols) * TILE_SIZE,
                (index // cols) * TILE_SIZE,
                (index % cols + 1) * TILE_SIZE,
                (index // cols + 1) * TILE_SIZE,
            )
        )
        for index in range(cols * rows)
    ]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((TILE_SIZE, TILE_SIZE), Image.Resampling.BICUBIC))
    return tiles


# Every normalised value a uint8 channel can take, computed with the reference's own float32
# operations (x / 255, then - mean, then / std): a table lookup gives bit-identical pixel values in
# one pass instead of three.
_NORMALISED = np.ascontiguousarray(
    ((np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)) - IMAGENET_MEAN.reshape(1, 3))
    / IMAGENET_STD.reshape(1, 3)
).T.copy()  # [3, 256]


def normalize_tile(tile: Image.Image) -> np.ndarray:
    """[3, 448, 448] float32, scaled to [0, 1] and normalised with ImageNet mean and std."""
    if tile.size != (TILE_SIZE, TILE_SIZE):
        tile = tile.resize((TILE_SIZE, TILE_SIZE), Image.Resampling.BICUBIC)
    pixels = np.asarray(tile.convert("RGB"))
    return np.stack([_NORMALISED[channel][pixels[..., channel]] for channel in range(3)])


def image_to_pixel_values(image: Image.Image, max_tiles: int) -> np.ndarray:
    """[tiles, 3, 448, 448] for one image: ``tile_image``'s tiles, normalised, without cutting them
    out one by one (the grid is normalised whole and laid out tile by tile in the same pass)."""
    image = image.convert("RGB")
    cols, rows = tile_grid_for(image.width, image.height, max_tiles)
    grid = np.asarray(image.resize((TILE_SIZE * cols, TILE_SIZE * rows), Image.Resampling.BICUBIC))
    count = cols * rows
    pixel_values = np.empty((count + (1 if count > 1 else 0), 3, TILE_SIZE, TILE_SIZE), dtype=np.float32)
    for channel in range(3):
        normalised = _NORMALISED[channel][grid[..., channel]]  # [rows·448, cols·448]
        pixel_values[:count, channel] = (
            normalised.reshape(rows, TILE_SIZE, cols, TILE_SIZE).transpose(0, 2, 1, 3).reshape(count, TILE_SIZE, TILE_SIZE)
        )
    if count > 1:  # the thumbnail: the whole image at one tile's size
        pixel_values[count] = normalize_tile(image.resize((TILE_SIZE, TILE_SIZE), Image.Resampling.BICUBIC))
    return pixel_values


def tiles_per_image(n_images: int, max_tiles: int, max_tiles_total: int | None) -> int:
    """Per-image tile cap; a shared budget splits evenly, at least one tile each."""
    if max_tiles_total is None:
        return max_tiles
    return max(1, min(max_tiles, max_tiles_total // max(1, n_images)))
