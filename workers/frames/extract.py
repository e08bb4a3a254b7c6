"""A video job's frames: the video read from storage into a temporary file, probed, sampled as the
job's options say (REFERENCE.md), and each sampled frame turned into its one 448×448 tile.

Used by the frames worker ahead of the GPU, and by the inference worker itself when a job reaches
it without prepared frames (the frames worker was down and the reaper routed it on).
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shared.config.settings import CommonSettings
from shared.storage import ObjectNotFound, ObjectStore, StorageError
from shared.video import (
    SampledFrame,
    SamplingError,
    VideoInfo,
    VideoLimits,
    VideoRejected,
    probe,
    read_frames,
    segment_midpoints,
)
from workers.inference.runtime.tiling import tile_image


class ExtractionFailed(Exception):
    """``code`` is the job's reason code; ``transient`` when storage, not the video, failed."""

    def __init__(self, code: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.transient = code, message, transient


@dataclass
class ExtractedFrames:
    tiles: np.ndarray  # [frames, 448, 448, 3] uint8
    frames: list[SampledFrame]
    video: VideoInfo
    decode_ms: float

    def describe(self) -> dict:
        """What the job records of its frames (``jobs.prepared``), without the bundle's key."""
        return {
            "frames": [frame.as_dict() for frame in self.frames],
            "video": {"n_frames": self.video.n_frames, "fps": self.video.fps, "width": self.video.width,
                      "height": self.video.height, "duration_s": self.video.duration_s, "decoder": self.video.decoder},
            "decode_ms": round(self.decode_ms, 1),
        }


def video_limits(settings: CommonSettings) -> VideoLimits:
    return VideoLimits(max_duration_s=settings.max_video_duration_s, max_side=settings.max_video_side)


def frame_tile(frame: np.ndarray) -> np.ndarray:
    """The one 448×448 tile of a video frame, as the runtime tiles an image with max_tiles 1."""
    (tile,) = tile_image(Image.fromarray(frame), 1)
    return np.asarray(tile)


def download(store: ObjectStore, key: str, folder: Path) -> Path:
    path = folder / "video"
    try:
        with path.open("wb") as sink:
            for chunk in store.iter_chunks(key):
                sink.write(chunk)
    except ObjectNotFound as error:
        raise ExtractionFailed("media_unavailable", f"media {key} does not exist") from error
    except StorageError as error:
        raise ExtractionFailed("media_unavailable", f"media {key} could not be read: {error}", transient=True) from error
    return path


@contextmanager
def downloaded_video(store: ObjectStore, key: str) -> Iterator[Path]:
    """The stored video in a temporary file, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="vlmq-video-"))
    try:
        yield download(store, key, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def rejections_as_failures() -> Iterator[None]:
    """A video that cannot be read or sampled becomes an ExtractionFailed with its reason code."""
    try:
        yield
    except (VideoRejected, SamplingError) as rejected:
        raise ExtractionFailed(rejected.code, rejected.message) from None


def _sample(path: Path, options: dict, settings: CommonSettings) -> tuple[VideoInfo, list[SampledFrame]]:
    """The video probed, and the frames the job's options pick (REFERENCE.md's midpoints)."""
    info = probe(path, video_limits(settings))
    frames = segment_midpoints(
        fps=info.fps, n_frames=info.n_frames, num_segments=options.get("num_frames", 8),
        start_s=options.get("start_s"), end_s=options.get("end_s"),
    )
    return info, frames


def extract_frames(
    store: ObjectStore, object_key: str, options: dict, *, settings: CommonSettings, decode_threads: int = 0,
    reader: str = "pyav",
) -> ExtractedFrames:
    """Sample ``options["num_frames"]`` frames between ``start_s`` and ``end_s`` of the stored video."""
    with downloaded_video(store, object_key) as path, rejections_as_failures():
        started = time.perf_counter()
        info, frames = _sample(path, options, settings)
        tiles = read_frames(path, info, [frame.index for frame in frames], transform=frame_tile,
                            max_workers=decode_threads or None, reader=reader)
        return ExtractedFrames(np.stack(tiles), frames, info, (time.perf_counter() - started) * 1000)


def plan_frames(store: ObjectStore, object_key: str, options: dict, *, settings: CommonSettings) -> list[SampledFrame]:
    """Which frames a job would sample (the plan endpoint): the video probed, nothing decoded."""
    with downloaded_video(store, object_key) as path, rejections_as_failures():
        return _sample(path, options, settings)[1]


def encode_bundle(tiles: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, tiles, allow_pickle=False)
    return buffer.getvalue()


def decode_bundle(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
