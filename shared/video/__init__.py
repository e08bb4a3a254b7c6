"""Video: which frames to sample (sampling) and reading them (decode: decord, PyAV as fallback)."""

from shared.video.decode import VideoInfo, VideoLimits, VideoRejected, probe, read_frames
from shared.video.sampling import (
    SampledFrame,
    SamplingError,
    Segment,
    fixed_length_segments,
    segment_midpoints,
)

__all__ = [
    "SampledFrame",
    "SamplingError",
    "Segment",
    "VideoInfo",
    "VideoLimits",
    "VideoRejected",
    "fixed_length_segments",
    "probe",
    "read_frames",
    "segment_midpoints",
]
