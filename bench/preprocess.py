"""Image preprocessing: vlmq's pipeline against the model cards' (PIL tiling, then Resize, ToTensor
and Normalize per tile, reproduced without torchvision), on the same JPEGs in one run.

    python bench/preprocess.py [--sizes 640x480 1280x720 1920x1080 3840x2160] [--repeats 5] [--threads 1 2]

Both sides start from the file's bytes and end with the model's float32 ``[tiles, 3, 448, 448]``
(max_tiles 12), checked equal. One core: both single-threaded (torch too). Several threads: vlmq's
worker loads a batch's images in a thread pool (``VLMQ_PREPROCESS_THREADS``; Pillow's decoder and
resampler release the GIL), against the cards' one request at a time. Prints tiles/s and the ratio.
Target: ≥ 2× on one core.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from tests.support.reference_preprocess import reference_pixel_values
from tests.test_preprocess_reference import photo_like_jpeg
from workers.inference.runtime.tiling import image_to_pixel_values

MAX_TILES = 12


def vlmq_pixel_values(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return image_to_pixel_values(image.convert("RGB"), MAX_TILES)


def tiles_per_s(run, files: list[bytes], repeats: int, threads: int = 1) -> float:
    tiles, started = 0, time.perf_counter()
    for _ in range(repeats):
        if threads == 1:
            outputs = [run(data) for data in files]
        else:
            with ThreadPoolExecutor(threads) as pool:
                outputs = list(pool.map(run, files))
        tiles += sum(len(output) for output in outputs)
    return tiles / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1280x720", "1920x1080", "3840x2160"])
    parser.add_argument("--images", type=int, default=4, help="distinct JPEGs per size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for size in arguments.sizes:
        width, height = map(int, size.split("x"))
        files = [photo_like_jpeg(width, height, seed) for seed in range(arguments.images)]
        difference = max(float(np.abs(vlmq_pixel_values(data) - reference_pixel_values(data, MAX_TILES).numpy()).max())
                         for data in files)
        baseline = tiles_per_s(lambda data: reference_pixel_values(data, MAX_TILES), files, arguments.repeats)
        row = {"size": size, "tiles_per_image": len(vlmq_pixel_values(files[0])), "max_abs_difference": difference,
               "cards_tiles_per_s": round(baseline, 1)}
        for threads in sorted(set(arguments.threads)):
            ours = tiles_per_s(vlmq_pixel_values, files, arguments.repeats, threads)
            row[f"vlmq_tiles_per_s_{threads}_threads"] = round(ours, 1)
            row[f"ratio_{threads}_threads"] = round(ours / baseline, 2)
        rows.append(row)
    one_core = [row["ratio_1_threads"] for row in rows]
    print(json.dumps({"benchmark": "preprocess", "max_tiles": MAX_TILES, "cpus": os.cpu_count(), "rows": rows,
                      "target_ratio_one_core": 2.0, "meets_target": min(one_core) >= 2.0}, indent=2))


if __name__ == "__main__":
    main()
