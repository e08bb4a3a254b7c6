"""Frame extraction: vlmq's reader against the cards' approach, on the same videos in one run.

    python bench/video_decode.py [--seconds 30] [--frames 8 16 32] [--repeats 3]

Videos: generated 1280×720 H.264 clips of ``--seconds`` at 30 fps (cached under
.run/bench/videos), one with a long keyframe interval (every 10 s) and one with a short one
(every 0.5 s). Both sides sample the same frames (REFERENCE.md's segment midpoints) and turn each
into the model's 448×448 tile with the same PIL resize, and their tiles are checked equal.

- baseline, the cards' ``load_video``: ``decord.VideoReader(path, num_threads=1)`` and one
  ``vr[i].asnumpy()`` per frame, in order, on one thread;
- vlmq (``shared.video.read_frames``): frames grouped by keyframe, the groups split into one run per
  CPU, each run read by its own reader in a thread, the tile made inside the thread; with decord
  (the default) and with ``VLMQ_FRAME_READER=pyav`` (PyAV seeking to each group's keyframe and
  skipping the non-reference frames no wanted frame needs: the same pixels, fewer frames decoded).

Also printed: what a GPU worker spends per job on frames when the frames worker prepared them (it
reads one array of tiles) against decoding the video itself. Target: ≥ 2× the cards' frames/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.video import probe, read_frames, segment_midpoints  # noqa: E402
from workers.frames.extract import decode_bundle, encode_bundle, frame_tile  # noqa: E402

CACHE = Path(".run/bench/videos")


def make_clip(path: Path, *, seconds: float, gop: int) -> Path:
    """1280×720 at 30 fps: a moving gradient (cheap to make, not trivial to decode)."""
    import av

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    width, height, fps = 1280, 720, 30
    rows, cols = np.mgrid[0:height, 0:width]
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        for index in range(int(seconds * fps)):
            image = np.empty((height, width, 3), np.uint8)
            image[..., 0] = (cols + index * 4) % 256
            image[..., 1] = (rows + index * 2) % 256
            image[..., 2] = (cols // 8 + rows // 8 + index) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.rename(path)
    return path


def cards_extract(path: Path, num_frames: int) -> list[np.ndarray]:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    frames = segment_midpoints(fps=float(reader.get_avg_fps()), n_frames=len(reader), num_segments=num_frames)
    return [frame_tile(reader[frame.index].asnumpy()) for frame in frames]


def vlmq_extract(path: Path, num_frames: int, reader: str) -> list[np.ndarray]:
    info = probe(path)
    frames = segment_midpoints(fps=info.fps, n_frames=info.n_frames, num_segments=num_frames)
    return read_frames(path, info, [frame.index for frame in frames], transform=frame_tile, reader=reader)


def best_of(repeats: int, run) -> tuple[float, list]:
    times, out = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    clips = {
        "long_keyframe_interval_10s": make_clip(CACHE / f"720p_{args.seconds:g}s_gop300.mp4", seconds=args.seconds, gop=300),
        "short_keyframe_interval_0.5s": make_clip(CACHE / f"720p_{args.seconds:g}s_gop15.mp4", seconds=args.seconds, gop=15),
    }
    rows = []
    for name, path in clips.items():
        for num_frames in args.frames:
            cards_s, cards_tiles = best_of(args.repeats, lambda: cards_extract(path, num_frames))
            vlmq_s, vlmq_tiles = best_of(args.repeats, lambda: vlmq_extract(path, num_frames, "decord"))
            pyav_s, pyav_tiles = best_of(args.repeats, lambda: vlmq_extract(path, num_frames, "pyav"))
            identical = all(np.array_equal(a, b) and np.array_equal(a, c)
                            for a, b, c in zip(cards_tiles, vlmq_tiles, pyav_tiles, strict=True))
            bundle = encode_bundle(np.stack(vlmq_tiles))
            load_s, _ = best_of(args.repeats, lambda: decode_bundle(bundle))
            rows.append({
                "video": name, "frames": num_frames,
                "cards_frames_per_s": round(num_frames / cards_s, 1),
                "vlmq_decord_frames_per_s": round(num_frames / vlmq_s, 1),
                "ratio_decord": round(cards_s / vlmq_s, 2),
                "vlmq_pyav_frames_per_s": round(num_frames / pyav_s, 1),
                "ratio_pyav": round(cards_s / pyav_s, 2),
                "tiles_identical": identical,
                "gpu_worker_ms_decoding_itself": round(vlmq_s * 1000, 1),
                "gpu_worker_ms_reading_prepared_tiles": round(load_s * 1000, 2),
            })
            print(json.dumps(rows[-1]), flush=True)
    summary = {"cpus": os.cpu_count(), "video": f"1280x720 H.264 (B-frames), 30 fps, {args.seconds:g} s",
               "target": ">= 2x"}
    for reader in ("decord", "pyav"):
        ratios = [row[f"ratio_{reader}"] for row in rows]
        summary[f"ratio_{reader}_min"], summary[f"ratio_{reader}_median"] = min(ratios), statistics.median(ratios)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
