"""Videos built offline with PyAV for tests: any frame rate (29.97 included), variable frame rate,
keyframe interval, size and length; and the broken kinds (corrupt, truncated, audio only)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

NTSC = Fraction(30000, 1001)


def _frame(index: int, width: int, height: int) -> av.VideoFrame:
    """A picture that changes every frame (a moving bar over a gradient), cheap to make."""
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = np.arange(width, dtype=np.uint16)[None, :] * 255 // max(1, width - 1)
    image[..., 1] = (index * 7) % 256
    image[..., 2] = np.arange(height, dtype=np.uint16)[:, None] * 255 // max(1, height - 1)
    bar = (index * 3) % width
    image[:, bar:bar + 4] = 255
    return av.VideoFrame.from_ndarray(image, format="rgb24")


def make_video(
    path: Path, *, seconds: float, fps: Fraction | int = 25, width: int = 64, height: int = 48, gop: int = 12,
    frame_times: list[float] | None = None, codec: str = "libx264", faststart: bool = False,
    preset: str = "ultrafast",
) -> Path:
    """A video of ``seconds`` at ``fps``; ``frame_times`` (seconds) instead gives each frame's own
    time, for a variable frame rate."""
    fps = Fraction(fps)
    options = {"movflags": "faststart"} if faststart else {}  # the index first, as streaming sites serve it
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            # ultrafast: no B-frames; veryfast and slower: B-frames, as most real H.264 has
            stream.options = {"preset": preset, "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        times = frame_times if frame_times is not None else [i / fps for i in range(round(seconds * fps))]
        if frame_times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for index, time_s in enumerate(times):
            frame = _frame(index, width, height)
            if frame_times is not None:
                frame.pts, frame.time_base = round(time_s * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_audio_only(path: Path, *, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = int(seconds * 16000)
        for start in range(0, samples, 1024):
            wave = np.sin(np.arange(start, min(start + 1024, samples)) / 10).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def truncated_copy(source: Path, path: Path, *, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def corrupt_copy(source: Path, path: Path) -> Path:
    """The container's header kept, every byte after the first 2 KiB scrambled."""
    data = bytearray(source.read_bytes())
    rng = np.random.default_rng(7)
    data[2048:] = rng.integers(0, 256, len(data) - 2048, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path
