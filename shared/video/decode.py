"""Open a video file and read chosen frames: decord first (the cards' decoder), PyAV when decord
cannot read the file.

Frames are read by keyframe interval: the wanted indices are grouped by the keyframe that starts
their group of pictures, the groups are split into one contiguous run per thread (balanced by the
frames each must decode), and each thread reads its run in order with one reader of its own, which
seeks to a group's keyframe and decodes forward. The cards read one ``vr[i]`` at a time on one
thread; on long keyframe intervals that decodes the whole video on one core. Each frame goes through
``transform`` (e.g. the resize to a 448 tile) inside its thread, so full-size frames never pile up.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger("vlmq.video")


class VideoRejected(Exception):
    """The file is not a video vlmq can sample; ``code`` is the job's reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class VideoLimits:
    max_duration_s: float = 4 * 3600.0
    max_side: int = 8192  # width or height in pixels
    max_frames: int = 4 * 3600 * 120


@dataclass
class VideoInfo:
    n_frames: int
    fps: float
    width: int
    height: int
    decoder: Literal["decord", "pyav"]
    key_indices: list[int] = field(default_factory=list, repr=False)  # frame indices of keyframes

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps


Transform = Callable[[np.ndarray], Any]


def probe(path: Path, limits: VideoLimits = VideoLimits()) -> VideoInfo:
    """What the video is, checked against ``limits``; VideoRejected when it cannot be sampled."""
    width, height = _video_stream_size(path)
    try:
        info = _probe_decord(path, width, height)
    except Exception as error:  # decord raises its own DECORDError, RuntimeError, or worse
        log.info("decord cannot read %s (%s); trying PyAV", path.name, error)
        info = _probe_pyav(path)
    _check_limits(info, limits)
    return info


def read_frames(
    path: Path, info: VideoInfo, indices: Sequence[int], *, transform: Transform = lambda frame: frame,
    max_workers: int | None = None, reader: Literal["decord", "pyav"] | None = None,
) -> list[Any]:
    """``transform(frame)`` of each wanted frame (RGB uint8, H×W×3), in the order of ``indices``.

    ``reader``: decord (the default for a file decord opened) or PyAV with non-reference frames
    skipped (the same pixels, fewer frames decoded; ``VLMQ_FRAME_READER``)."""
    wanted = sorted(set(indices))
    if not wanted:
        return []
    if wanted[0] < 0 or wanted[-1] >= info.n_frames:
        raise VideoRejected("invalid_input", f"frame {wanted[-1]} is outside the video's {info.n_frames} frames")
    groups = _groups_by_keyframe(wanted, info.key_indices)
    workers = max(1, min(len(groups), max_workers or os.cpu_count() or 1))
    groups = _runs(groups, info.key_indices, workers)
    first = "pyav" if info.decoder == "pyav" else (reader or "decord")
    # The other reader when the first fails: decord mis-sizes some frame widths and stops at damaged
    # tails; PyAV's reader needs presentation timestamps. A file only PyAV opened has no second.
    second = {"decord": "pyav", "pyav": "decord" if info.decoder == "decord" else None}[first]
    try:
        parts = _read_groups(path, info, groups, transform, workers, first)
    except Exception as error:  # VideoRejected from a reader included: the other one may do better
        if second is None:
            if isinstance(error, VideoRejected):
                raise
            raise VideoRejected("invalid_media", f"the video could not be decoded: {_reason(error, path)}") from error
        log.info("%s could not read frames of %s (%s); reading them with %s", first, path.name, error, second)
        try:
            parts = _read_groups(path, info, groups, transform, workers, second)
        except VideoRejected:
            raise
        except Exception as again:  # a frame no decoder can produce: a truncated or corrupt file
            raise VideoRejected("invalid_media", f"the video could not be decoded: {_reason(again, path)}") from again
    by_index = {index: frame for group, frames in zip(groups, parts, strict=True)
                for index, frame in zip(group, frames, strict=True)}
    return [by_index[index] for index in indices]


def _reason(error: BaseException, path: Path) -> str:
    """A decoder's error for the user: what went wrong, never where the server keeps the file.
    FFmpeg's errors (PyAV) carry the file name apart from their reason; others get it cut out."""
    reason = getattr(error, "strerror", None)
    if not isinstance(reason, str) or not reason:
        reason = str(error).replace(str(path), "the file").replace(str(path.parent), "")
    return f"{type(error).__name__}: {reason}"


def _read_groups(path: Path, info: VideoInfo, groups: list[list[int]], transform: Transform, workers: int,
                 decoder: str) -> list[list[Any]]:
    read_group = _read_group_decord if decoder == "decord" else _read_group_pyav
    with ThreadPoolExecutor(workers, thread_name_prefix="vlmq-decode") as pool:
        return list(pool.map(lambda group: read_group(path, info, group, transform), groups))


def _video_stream_size(path: Path) -> tuple[int, int]:
    """(width, height) of the first video stream; VideoRejected when there is none."""
    import av

    try:
        with av.open(str(path)) as container:
            if container.format.name.endswith("_pipe") or container.format.name == "image2":
                raise VideoRejected("invalid_media", f"the file is a still image ({container.format.name}), not a video")
            if not container.streams.video:
                kinds = sorted({stream.type for stream in container.streams}) or ["none"]
                raise VideoRejected("no_video_stream", f"the file has no video stream (streams: {', '.join(kinds)})")
            context = container.streams.video[0].codec_context
            return context.width, context.height
    except VideoRejected:
        raise
    except Exception as error:  # av.error.InvalidDataError and friends
        raise VideoRejected("invalid_media", f"the video could not be opened: {_reason(error, path)}") from error


def _probe_decord(path: Path, width: int, height: int) -> VideoInfo:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return VideoInfo(
        n_frames=len(reader), fps=float(reader.get_avg_fps()), width=int(width), height=int(height),
        decoder="decord", key_indices=[int(index) for index in reader.get_key_indices()],
    )


def _probe_pyav(path: Path) -> VideoInfo:
    """Counts frames by their packets (no decoding); frame i is the i-th presentation time."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            packets = [(packet.pts, packet.is_keyframe) for packet in container.demux(stream)
                       if packet.pts is not None and packet.size]
            width, height = stream.codec_context.width, stream.codec_context.height
    except Exception as error:
        raise VideoRejected("invalid_media", f"the video could not be read: {_reason(error, path)}") from error
    order = sorted(range(len(packets)), key=lambda i: packets[i][0])
    keys = [rank for rank, i in enumerate(order) if packets[i][1]]
    return VideoInfo(n_frames=len(packets), fps=float(rate or 0), width=width, height=height, decoder="pyav",
                     key_indices=keys or [0])


def _check_limits(info: VideoInfo, limits: VideoLimits) -> None:
    if info.n_frames <= 0:
        raise VideoRejected("empty_video", "the video has no frames")
    if not math.isfinite(info.fps) or info.fps <= 0:
        raise VideoRejected("invalid_media", f"the video has no usable frame rate ({info.fps})")
    if info.width <= 0 or info.height <= 0:
        raise VideoRejected("invalid_media", "the video's frames have no size")
    if max(info.width, info.height) > limits.max_side:
        raise VideoRejected("video_too_large", f"{info.width}×{info.height} is larger than {limits.max_side} pixels a side")
    if info.duration_s > limits.max_duration_s or info.n_frames > limits.max_frames:
        raise VideoRejected(
            "video_too_long", f"{info.duration_s:.0f} s ({info.n_frames} frames) is longer than {limits.max_duration_s:.0f} s"
        )


def _keyframe_before(index: int, keys: list[int]) -> int:
    return keys[max(0, bisect.bisect_right(keys, index) - 1)] if keys else 0


def _groups_by_keyframe(wanted: list[int], key_indices: list[int]) -> list[list[int]]:
    """Wanted indices (sorted) split where a keyframe lies between them."""
    keys = sorted(key_indices)
    groups: dict[int, list[int]] = {}
    for index in wanted:
        groups.setdefault(_keyframe_before(index, keys), []).append(index)
    return list(groups.values())


def _runs(groups: list[list[int]], key_indices: list[int], workers: int) -> list[list[int]]:
    """Consecutive groups joined into ``workers`` runs of about equal decoding work (the frames from
    each group's keyframe to its last wanted frame)."""
    keys = sorted(key_indices)
    costs = [group[-1] - _keyframe_before(group[0], keys) + len(group) for group in groups]
    target = sum(costs) / workers
    runs: list[list[int]] = [[]]
    done = 0.0
    for group, cost in zip(groups, costs, strict=True):
        if runs[-1] and len(runs) < workers and done + cost / 2 > target * len(runs):
            runs.append([])
        runs[-1].extend(group)
        done += cost
    return runs


def _read_group_decord(path: Path, info: VideoInfo, group: list[int], transform: Transform) -> list[Any]:
    """In order, one ``reader[i]`` each: decord decodes forward from where it is when the next frame
    is ahead in the same group of pictures, and seeks to a keyframe otherwise."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    frames = []
    for index in group:
        frame = reader[index].asnumpy()
        # decord mis-sizes some frame widths (e.g. 48 px) and returns padded pixels without a word:
        # a frame of the wrong shape sends the whole read to PyAV.
        if frame.shape != (info.height, info.width, 3):
            raise RuntimeError(f"decord returned a {frame.shape} frame for a {info.width}×{info.height} video")
        frames.append(transform(frame))
    return frames


@functools.lru_cache(maxsize=16)
def _presentation_order(path: str, _mtime_ns: int, _size: int) -> tuple[int, ...]:
    """Every frame's presentation timestamp in display order, from the packets (nothing decoded):
    frame ``i`` of the video is the one with the ``i``-th smallest timestamp."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return tuple(sorted(packet.pts for packet in container.demux(stream) if packet.pts is not None and packet.size))


def _read_group_pyav(path: Path, info: VideoInfo, run: list[int], transform: Transform) -> list[Any]:
    """Per keyframe group: seek to its keyframe and decode forward to its last wanted frame, telling
    the decoder to skip every non-reference frame that is not wanted. Nothing depends on a
    non-reference frame, so the frames kept are the very pixels a full decode gives (the cards'
    decord decodes through the same FFmpeg and converts to RGB the same way); only fewer frames are
    decoded on the way, which matters most on long keyframe intervals with B-frames."""
    import av

    stat = path.stat()
    order = _presentation_order(str(path), stat.st_mtime_ns, stat.st_size)
    keys = sorted(info.key_indices)
    out: dict[int, Any] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        for group in _groups_by_keyframe(run, keys):
            wanted = {order[index]: index for index in group}
            container.seek(order[_keyframe_before(group[0], keys)], stream=stream, backward=True)
            for packet in container.demux(stream):
                context.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
                for frame in context.decode(packet):  # an empty packet at the end drains the decoder
                    index = wanted.get(frame.pts)
                    if index is not None and index not in out:
                        out[index] = transform(frame.to_ndarray(format="rgb24"))
                if all(index in out for index in group):
                    break
            context.skip_frame = "DEFAULT"
    missing = set(run) - out.keys()
    if missing:
        raise VideoRejected("invalid_media", f"frames {sorted(missing)[:5]} could not be decoded")
    return [out[index] for index in run]
