"""Dynamic tiling against grids worked out by hand from REFERENCE.md's rules."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from workers.inference.runtime.tiling import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    candidate_grids,
    image_to_pixel_values,
    tile_count,
    tile_grid_for,
    tile_image,
    tiles_per_image,
)

# (width, height, max_tiles) → (cols, rows); the comment is the hand computation.
HAND_COMPUTED = [
    ((448, 448, 12), (1, 1)),  # aspect 1; tie with 2×2 needs area > 2·448², it is 1·448²
    ((896, 896, 12), (2, 2)),  # tie 2×2: 4·448² > 2·448²; tie 3×3: 4 > 4.5 fails
    ((1344, 1344, 12), (3, 3)),  # 9·448² > 4.5·448²
    ((900, 900, 12), (2, 2)),  # 810000 > 401408; 810000 > 903168 fails
    ((950, 950, 12), (2, 2)),  # 902500 > 903168 fails: the tie-break boundary, below
    ((951, 951, 12), (3, 3)),  # 904401 > 903168: the tie-break boundary, above
    ((1, 1, 12), (1, 1)),  # one pixel
    ((2, 1, 12), (2, 1)),  # aspect 2; tie 4×2 needs 802816 px
    ((1, 2, 12), (1, 2)),
    ((800, 600, 12), (4, 3)),  # exact 4:3
    ((640, 480, 12), (4, 3)),
    ((1024, 768, 12), (4, 3)),
    ((1000, 500, 12), (2, 1)),  # 500000 px ≤ 802816: no move to 4×2
    ((2000, 1000, 12), (4, 2)),  # 2000000 px > 802816: tie goes to 4×2
    ((448, 224, 12), (2, 1)),
    ((1920, 1080, 12), (4, 2)),  # 2:1 and 4:2 tie at |1.778−2|; 5:3 has 15 tiles > 12
    ((1080, 1920, 12), (2, 4)),
    ((300, 1000, 12), (1, 3)),  # 1:3 vs 2:6 tie, 300000 ≤ 1204224; 2:7 has 14 tiles
    ((3000, 1000, 12), (6, 2)),  # 3:1 → 6:2 since 3000000 > 1204224
    ((1500, 500, 12), (3, 1)),  # 750000 ≤ 1204224
    ((10000, 10, 12), (12, 1)),  # extreme: the widest grid
    ((10, 10000, 12), (1, 12)),  # extreme: the tallest grid
    ((800, 600, 6), (3, 2)),  # 4:3 needs 12 tiles; 3:2 is closest within 6
    ((1920, 1080, 1), (1, 1)),  # one tile allowed
    ((449, 448, 12), (1, 1)),  # 1×1 and 2×2 tie; 201152 ≤ 401408
    ((3584, 2240, 40), (8, 5)),  # 8:5 exactly at the 40-tile maximum
]


@pytest.mark.parametrize("size, expected", HAND_COMPUTED, ids=[f"{w}x{h}-max{m}" for (w, h, m), _ in HAND_COMPUTED])
def test_tile_grid_matches_the_hand_computed_grid(size, expected):
    width, height, max_tiles = size
    assert tile_grid_for(width, height, max_tiles) == expected


def test_candidates_are_ordered_by_area_and_bounded():
    grids = candidate_grids(12)
    areas = [cols * rows for cols, rows in grids]
    assert areas == sorted(areas) and max(areas) == 12 and grids[0] == (1, 1)
    assert len(grids) == sum(len([d for d in range(1, n + 1) if n % d == 0]) for n in range(1, 13))


def test_tiles_are_cut_row_by_row_and_followed_by_a_thumbnail():
    # given an 896×448 image whose left half is red and right half blue
    image = Image.new("RGB", (896, 448), (255, 0, 0))
    image.paste((0, 0, 255), (448, 0, 896, 448))

    # when tiled
    tiles = tile_image(image, 12)

    # then: left tile, right tile, thumbnail, each 448×448
    assert [tile.size for tile in tiles] == [(448, 448)] * 3
    assert tiles[0].getpixel((10, 10)) == (255, 0, 0)
    assert tiles[1].getpixel((10, 10)) == (0, 0, 255)
    assert tiles[2].getpixel((10, 10)) == (255, 0, 0) and tiles[2].getpixel((440, 10)) == (0, 0, 255)


def test_a_single_tile_has_no_thumbnail_and_counts_match():
    assert len(tile_image(Image.new("RGB", (300, 300)), 12)) == 1
    assert tile_count((1, 1)) == 1 and tile_count((4, 3)) == 13


def test_pixel_values_are_normalised_tiles():
    values = image_to_pixel_values(Image.new("RGB", (448, 448), (255, 255, 255)), 12)
    assert values.shape == (1, 3, 448, 448) and values.dtype == np.float32
    expected = ((1.0 - IMAGENET_MEAN) / IMAGENET_STD).reshape(3)
    np.testing.assert_allclose(values[0, :, 0, 0], expected, rtol=1e-6)


def test_grayscale_and_alpha_images_become_rgb():
    assert image_to_pixel_values(Image.new("LA", (100, 50)), 4).shape[1] == 3
    assert image_to_pixel_values(Image.new("P", (50, 100)), 4).shape[1] == 3


@pytest.mark.parametrize("n, max_tiles, total, expected", [(1, 12, None, 12), (3, 12, 10, 3), (4, 6, 40, 6), (50, 12, 10, 1)])
def test_a_shared_tile_budget_is_split_evenly_with_at_least_one_each(n, max_tiles, total, expected):
    assert tiles_per_image(n, max_tiles, total) == expected
