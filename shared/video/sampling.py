"""Which frames of a video the model sees (REFERENCE.md, "Video frame sampling").

Segment midpoints as upstream's ``get_index``: the span between the bounds is cut into
``num_segments`` equal segments and the frame near each segment's middle is taken. Both roundings
are round-half-to-even (Python's ``round``), as upstream's ``round`` and ``np.round`` are. vlmq clamps
indices to the last frame where upstream would index past it, and refuses what upstream cannot
sample (no frames, no frame rate, an empty span) with a reason code instead of failing inside decord.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Upstream's "no bounds": a span far wider than any video, clamped to the whole video.
UNBOUNDED_START_S, UNBOUNDED_END_S = -100_000.0, 100_000.0


class SamplingError(ValueError):
    """The video cannot be sampled as asked; ``code`` is the job's reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class SampledFrame:
    index: int
    time_s: float

    def as_dict(self) -> dict:
        return {"index": self.index, "time_s": self.time_s}


@dataclass(frozen=True)
class Segment:
    """A stretch of video and the frames sampled from it (fixed-length segments, video indexes)."""

    start_s: float
    end_s: float
    frames: tuple[SampledFrame, ...]


def segment_midpoints(
    *, fps: float, n_frames: int, num_segments: int, start_s: float | None = None, end_s: float | None = None
) -> list[SampledFrame]:
    """The ``num_segments`` frames upstream's sampler picks, each with its time ``index / fps``."""
    if n_frames <= 0:
        raise SamplingError("empty_video", "the video has no frames")
    if not math.isfinite(fps) or fps <= 0:
        raise SamplingError("invalid_media", f"the video has no usable frame rate ({fps})")
    if num_segments < 1:
        raise SamplingError("invalid_input", "at least one frame must be sampled")
    if start_s is not None and end_s is not None and start_s >= end_s:
        raise SamplingError("invalid_input", f"start_s ({start_s}) must be before end_s ({end_s})")
    max_frame = n_frames - 1
    start_idx = max(0, round((UNBOUNDED_START_S if start_s is None else start_s) * fps))
    end_idx = min(round((UNBOUNDED_END_S if end_s is None else end_s) * fps), max_frame)
    segment = (end_idx - start_idx) / num_segments
    # A start past the end makes ``segment`` negative and upstream index past the last frame.
    indices = [min(int(start_idx + segment / 2 + round(segment * i)), max_frame) for i in range(num_segments)]
    return [SampledFrame(index, index / fps) for index in indices]


def fixed_length_segments(
    *, fps: float, n_frames: int, segment_s: float, frames_per_segment: int
) -> list[Segment]:
    """The whole video cut into segments of ``segment_s`` seconds (the last one shorter), each
    sampled by segment midpoints within its own bounds. A last piece shorter than one frame has
    nothing to show of its own: it joins the segment before it."""
    if segment_s <= 0:
        raise SamplingError("invalid_input", "segment_s must be positive")
    if n_frames <= 0:
        raise SamplingError("empty_video", "the video has no frames")
    if not math.isfinite(fps) or fps <= 0:
        raise SamplingError("invalid_media", f"the video has no usable frame rate ({fps})")
    duration_s = n_frames / fps
    segments = []
    count = max(1, math.ceil(duration_s / segment_s - 1e-9))
    if count > 1 and duration_s - (count - 1) * segment_s < 1 / fps:
        count -= 1
    for number in range(count):
        start_s = number * segment_s
        end_s = duration_s if number == count - 1 else start_s + segment_s
        frames = segment_midpoints(
            fps=fps, n_frames=n_frames, num_segments=frames_per_segment, start_s=start_s, end_s=end_s
        )
        segments.append(Segment(start_s, end_s, tuple(frames)))
    return segments
