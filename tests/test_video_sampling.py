"""Frame sampling against REFERENCE.md's rule, on real videos built with PyAV and read back with
decord (PyAV where decord cannot): the frames the decoder returns are the frames the rule names."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from shared.video import (
    SamplingError,
    VideoRejected,
    fixed_length_segments,
    probe,
    read_frames,
    segment_midpoints,
)
from tests.support.videos import NTSC, corrupt_copy, make_audio_only, make_video, truncated_copy

# (name, fps, seconds, width, height, gop): several frame rates including 29.97, 1 s to 2 min,
# landscape and portrait, short and long keyframe intervals.
VIDEOS = [
    ("ntsc-7s-landscape", NTSC, 7.3, 64, 48, 15),
    ("24fps-1s-portrait", 24, 1.0, 48, 64, 12),
    ("25fps-30s", 25, 30.0, 64, 48, 250),
    ("60fps-12s-portrait", 60, 12.0, 32, 48, 30),
    ("15fps-2min", 15, 120.0, 32, 24, 150),
]
BOUNDS = [None, (0.5, 3.0), (2.2, 1000.0), (0.0, 0.9)]
FRAME_COUNTS = [1, 4, 8, 16, 32]


def reference_indices(fps: float, max_frame: int, num_segments: int, bound) -> list[int]:
    """REFERENCE.md's rule written out with numpy's rounding, plus vlmq's clamp to the last frame."""
    start, end = bound if bound else (-100000, 100000)
    start_idx = max(0, int(np.round(start * fps)))
    end_idx = min(int(np.round(end * fps)), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return [min(int(start_idx + seg_size / 2 + np.round(seg_size * i)), max_frame) for i in range(num_segments)]


def shows_frame(frame: np.ndarray, index: int) -> bool:
    """The test videos paint (index·7) mod 256 into the green channel of every frame; neighbours
    differ by 7, compression moves it by 2 or 3 at most."""
    shown = float(np.median(frame[..., 1]))
    return abs(shown - (index * 7) % 256) <= 3


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {
        name: make_video(folder / f"{name}.mp4", fps=fps, seconds=seconds, width=width, height=height, gop=gop)
        for name, fps, seconds, width, height, gop in VIDEOS
    }


def test_sampled_indices_equal_the_reference_rule_and_the_decoder_returns_those_frames(videos):
    checked = 0
    for name, path in videos.items():
        # given a video as the decoder sees it
        info = probe(path)
        assert info.decoder == "decord"
        for bound, count in itertools.product(BOUNDS, FRAME_COUNTS):
            # when frames are sampled
            frames = segment_midpoints(fps=info.fps, n_frames=info.n_frames, num_segments=count,
                                       start_s=bound[0] if bound else None, end_s=bound[1] if bound else None)
            # then they are the reference rule's indices, each at index / fps
            expected = reference_indices(info.fps, info.n_frames - 1, count, bound)
            assert [frame.index for frame in frames] == expected, (name, bound, count)
            assert all(frame.time_s == frame.index / info.fps for frame in frames)
            checked += 1
        # and the decoder hands back exactly those pictures
        indices = reference_indices(info.fps, info.n_frames - 1, 8, None)
        decoded = read_frames(path, info, indices)
        assert all(shows_frame(frame, index) for frame, index in zip(decoded, indices, strict=True)), name
    assert checked >= 30


def test_ntsc_frame_rate_and_times(videos):
    info = probe(videos["ntsc-7s-landscape"])

    frames = segment_midpoints(fps=info.fps, n_frames=info.n_frames, num_segments=4)

    assert info.fps == pytest.approx(30000 / 1001) and info.n_frames == round(7.3 * 30000 / 1001)
    assert [frame.index for frame in frames] == reference_indices(info.fps, info.n_frames - 1, 4, None)
    assert frames[-1].time_s == pytest.approx(frames[-1].index * 1001 / 30000)


def test_portrait_videos_keep_their_orientation(videos):
    info = probe(videos["24fps-1s-portrait"])
    (frame,) = read_frames(videos["24fps-1s-portrait"], info, [3])
    assert (info.width, info.height) == (48, 64) and frame.shape == (64, 48, 3)


def test_a_variable_frame_rate_video_samples_by_frame_index(tmp_path):
    # given frames at irregular times
    times = [0.0, 0.04, 0.1, 0.12, 0.3, 0.5, 0.52, 0.9, 1.0, 1.5, 1.55, 2.0]
    path = make_video(tmp_path / "vfr.mp4", seconds=0, frame_times=times)

    info = probe(path)
    frames = segment_midpoints(fps=info.fps, n_frames=info.n_frames, num_segments=4)

    # then every frame is counted and the average rate drives the rule, as upstream's get_avg_fps()
    assert info.n_frames == len(times)
    assert [frame.index for frame in frames] == reference_indices(info.fps, len(times) - 1, 4, None)
    decoded = read_frames(path, info, [frame.index for frame in frames])
    assert all(shows_frame(image, frame.index) for image, frame in zip(decoded, frames, strict=True))


def test_indices_past_the_end_are_clamped_where_upstream_would_fail():
    # given a start past the end of a 2 s video: upstream's segment turns negative, its indices
    # run past the last frame (60, 57, 53, 50 of 50 frames) and decord fails
    frames = segment_midpoints(fps=25, n_frames=50, num_segments=4, start_s=2.5, end_s=9.0)
    # then vlmq clamps each to the last frame
    assert [frame.index for frame in frames] == [49, 49, 49, 49]


def test_half_way_roundings_are_to_even():
    # 10 frames, 4 segments: seg = 9/4 = 2.25; frame 2 is int(1.125 + round(4.5)) = 1.125 + 4 (to even) → 5,
    # where rounding halves up would give 6
    assert [f.index for f in segment_midpoints(fps=10, n_frames=10, num_segments=4)] == [1, 3, 5, 8]
    # start 0.25 s at 10 fps: round(2.5) = 2
    assert segment_midpoints(fps=10, n_frames=100, num_segments=1, start_s=0.25, end_s=0.65)[0].index == 4


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"fps": 25, "n_frames": 0, "num_segments": 8}, "empty_video"),
        ({"fps": 0.0, "n_frames": 10, "num_segments": 8}, "invalid_media"),
        ({"fps": float("nan"), "n_frames": 10, "num_segments": 8}, "invalid_media"),
        ({"fps": 25, "n_frames": 100, "num_segments": 8, "start_s": 3.0, "end_s": 3.0}, "invalid_input"),
    ],
    ids=["no-frames", "zero-fps", "nan-fps", "empty-span"],
)
def test_what_cannot_be_sampled_fails_with_a_reason_code(kwargs, code):
    with pytest.raises(SamplingError) as refused:
        segment_midpoints(**kwargs)
    assert refused.value.code == code


def test_fixed_length_segments_cover_the_video_in_order():
    # given 25 s at 29.97 fps cut into 10 s segments of 4 frames
    segments = fixed_length_segments(fps=30000 / 1001, n_frames=round(25 * 30000 / 1001), segment_s=10,
                                     frames_per_segment=4)

    # then three segments, the last one shorter, each frame inside its own segment
    assert [(s.start_s, round(s.end_s, 3)) for s in segments] == [(0, 10), (10, 20), (20, 24.992)]
    for segment in segments:
        assert len(segment.frames) == 4
        assert all(segment.start_s - 0.05 <= frame.time_s < segment.end_s for frame in segment.frames)
    times = [frame.time_s for segment in segments for frame in segment.frames]
    assert times == sorted(times)


def test_a_video_shorter_than_one_segment_is_one_segment():
    (segment,) = fixed_length_segments(fps=24, n_frames=24, segment_s=10, frames_per_segment=2)
    assert (segment.start_s, segment.end_s) == (0, 1.0)
    assert [frame.index for frame in segment.frames] == reference_indices(24, 23, 2, (0, 1.0))


class TestBadVideos:
    def test_audio_only(self, tmp_path):
        with pytest.raises(VideoRejected) as refused:
            probe(make_audio_only(tmp_path / "voice.mp4"))
        assert refused.value.code == "no_video_stream"

    def test_truncated_without_its_index(self, videos, tmp_path):
        with pytest.raises(VideoRejected) as refused:
            probe(truncated_copy(videos["25fps-30s"], tmp_path / "cut.mp4"))
        assert refused.value.code == "invalid_media"

    def test_truncated_with_its_index_first_reads_or_fails_cleanly(self, tmp_path):
        # the index promises frames the file no longer has: sampling reads what is there or says why
        source = make_video(tmp_path / "fast.mp4", seconds=10, fps=25, gop=25, faststart=True)
        path = truncated_copy(source, tmp_path / "cut.mp4")
        try:
            info = probe(path)
            indices = [f.index for f in segment_midpoints(fps=info.fps, n_frames=info.n_frames, num_segments=8)]
            assert len(read_frames(path, info, indices)) == 8
        except VideoRejected as refused:
            assert refused.code == "invalid_media"

    def test_corrupt(self, videos, tmp_path):
        with pytest.raises(VideoRejected) as refused:
            info = probe(corrupt_copy(videos["ntsc-7s-landscape"], tmp_path / "noise.mp4"))
            read_frames(tmp_path / "noise.mp4", info, [0, info.n_frames - 1])
        assert refused.value.code == "invalid_media"

    def test_a_still_image_renamed_mp4(self, tmp_path):
        from tests.support.media import png_bytes

        path = tmp_path / "photo.mp4"
        path.write_bytes(png_bytes(64, 48))
        # ffmpeg reads a PNG as a one-frame "video": it is refused as having no frame rate or as unreadable
        with pytest.raises(VideoRejected) as refused:
            probe(path)
        assert refused.value.code in ("invalid_media", "empty_video")

    def test_absurd_resolution_and_duration(self, videos):
        from shared.video import VideoLimits

        with pytest.raises(VideoRejected) as too_large:
            probe(videos["25fps-30s"], VideoLimits(max_side=32))
        assert too_large.value.code == "video_too_large"
        with pytest.raises(VideoRejected) as too_long:
            probe(videos["25fps-30s"], VideoLimits(max_duration_s=10))
        assert too_long.value.code == "video_too_long"


def test_frame_rates_are_exact_fractions_when_the_container_says_so(videos):
    assert Fraction(probe(videos["ntsc-7s-landscape"]).fps).limit_denominator(1001) == NTSC


@pytest.mark.parametrize("gop", [12, 250])
def test_the_pyav_reader_skipping_non_reference_frames_returns_decords_exact_pixels(tmp_path, gop):
    # given a video with B-frames (most real H.264 has them), long and short keyframe intervals
    path = make_video(tmp_path / "b.mp4", seconds=12, fps=25, width=96, height=64, gop=gop, preset="veryfast")
    info = probe(path)
    indices = [frame.index for frame in segment_midpoints(fps=info.fps, n_frames=info.n_frames, num_segments=16)]

    # when the same frames are read by decord and by PyAV skipping what no kept frame needs
    by_decord = read_frames(path, info, indices, reader="decord")
    by_pyav = read_frames(path, info, indices, reader="pyav", max_workers=2)

    # then every pixel is the same
    assert all(np.array_equal(a, b) for a, b in zip(by_decord, by_pyav, strict=True))
    assert all(shows_frame(frame, index) for frame, index in zip(by_pyav, indices, strict=True))
