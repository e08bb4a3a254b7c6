"""The frames worker's share of a video index: cut one video into fixed-length segments, store each
batch of segments' tiles and a JPEG thumbnail per segment, record the segments, and publish one
caption task per batch to the index model's queue.

The video is claimed under a lease (renewed per batch), so a worker that dies mid-video is noticed
by the reaper and the video is cut again; segment rows are inserted idempotently (one per video and
sequence number), and stored objects have deterministic keys.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from shared.config.settings import FramesSettings
from shared.db.engine import session_scope
from shared.db.media_rows import record_media
from shared.db.models import IndexSegment, IndexVideo, VideoIndex, utcnow
from shared.indexes.progress import (
    claim_video,
    fail_video,
    index_is_active,
    renew_video_lease,
    requeue_video,
    set_video_plan,
    video_cut,
)
from shared.media.fetch import FetchFailed, FetchLimits, fetch_media
from shared.storage import (
    ObjectStore,
    StorageError,
    put_bytes,
    segment_batch_key,
    thumbnail_key,
)
from shared.video import (
    SamplingError,
    Segment,
    VideoRejected,
    fixed_length_segments,
    probe,
    read_frames,
)
from workers.frames.extract import (
    ExtractionFailed,
    downloaded_video,
    encode_bundle,
    frame_tile,
    video_limits,
)

log = logging.getLogger("vlmq.frames")
THUMBNAIL_WIDTH = 320

# Publish one caption task: (video_id, batch, model).
PublishBatch = Callable[[str, int, str], None]


class RetryVideoLater(Exception):
    """Storage hiccuped; the task is retried with backoff."""


def _frame_and_thumbnail(frame: np.ndarray) -> tuple[np.ndarray, Image.Image]:
    image = Image.fromarray(frame)
    small = image.resize((THUMBNAIL_WIDTH, max(1, round(image.height * THUMBNAIL_WIDTH / image.width))),
                         Image.Resampling.BILINEAR, reducing_gap=2.0)
    return frame_tile(frame), small


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def index_video(video_id: str, *, settings: FramesSettings, store: ObjectStore, publish_batch: PublishBatch,
                last_try: bool = True) -> str:
    database_url = settings.resolved_database_url
    with session_scope(database_url) as session:
        video = claim_video(session, video_id, lease_s=settings.index_lease_s)
        if video is None:
            return "skipped"
        index = session.get(VideoIndex, video.index_id)
        job = _VideoWork(video, index)
    try:
        key = job.object_key or _fetch(job, settings, store, database_url)
        with downloaded_video(store, key) as path:
            info = probe(path, video_limits(settings))
            segments = fixed_length_segments(fps=info.fps, n_frames=info.n_frames, segment_s=job.segment_s,
                                             frames_per_segment=job.frames_per_segment)
            with session_scope(database_url) as session:
                if not set_video_plan(session, video_id, object_key=key, duration_s=round(info.duration_s, 3),
                                      segments_total=len(segments), attempt=job.attempt):
                    return "skipped"
            size = settings.index_batch_segments
            for batch, start in enumerate(range(0, len(segments), size)):
                if not _still_ours(database_url, job, settings):
                    return "stopped"
                _cut_batch(job, batch, segments[start:start + size], start, path, info, store, settings, database_url)
                publish_batch(video_id, batch, job.model)
        with session_scope(database_url) as session:
            video_cut(session, video_id, attempt=job.attempt)
        log.info("video %s of %s: %d segments in %d batches", video_id, job.index_id, len(segments),
                 -(-len(segments) // size))
        return "cut"
    except (VideoRejected, SamplingError, ExtractionFailed, FetchFailed) as failure:
        if getattr(failure, "transient", False) and not last_try:
            with session_scope(database_url) as session:
                requeue_video(session, video_id)  # queued again, so the retried task can claim it
            raise RetryVideoLater(failure.message) from None
        with session_scope(database_url) as session:
            fail_video(session, video_id, code=failure.code, message=failure.message)
        log.info("video %s of %s failed: %s: %s", video_id, job.index_id, failure.code, failure.message)
        return "failed"
    except StorageError as error:
        if not last_try:
            with session_scope(database_url) as session:
                requeue_video(session, video_id)  # queued again, so the retried task can claim it
            raise RetryVideoLater(str(error)) from None
        with session_scope(database_url) as session:
            fail_video(session, video_id, code="media_unavailable", message=f"storage failed: {error}")
        return "failed"


class _VideoWork:
    """What the task needs of the video and its index, read once."""

    def __init__(self, video: IndexVideo, index: VideoIndex) -> None:
        self.video_id, self.index_id, self.tenant_id = video.id, index.id, video.tenant_id
        self.attempt, self.position, self.external_id = video.attempts, video.position, video.external_id
        self.source, self.object_key = dict(video.source), video.object_key
        self.segment_s, self.frames_per_segment, self.model = index.segment_s, index.frames_per_segment, index.model


def _fetch(job: _VideoWork, settings: FramesSettings, store: ObjectStore, database_url: str) -> str:
    media = fetch_media(job.source["url"], limits=FetchLimits.from_settings(settings), store=store,
                        tenant_id=job.tenant_id)
    if media.is_image:
        raise ExtractionFailed("invalid_input", f"{media.url} is {media.content_type}, not a video")
    with session_scope(database_url) as session:
        record_media(session.connection(), job.tenant_id, [media])
    return media.object_key


def _still_ours(database_url: str, job: _VideoWork, settings: FramesSettings) -> bool:
    """Renew the lease; False when the index was canceled or the video given to another attempt."""
    with session_scope(database_url) as session:
        return index_is_active(session, job.index_id) and renew_video_lease(
            session, job.video_id, attempt=job.attempt, lease_s=settings.index_lease_s
        )


def _cut_batch(job: _VideoWork, batch: int, segments: list[Segment], first_seq: int, path: Path, info,
               store: ObjectStore, settings: FramesSettings, database_url: str) -> None:
    indices = [frame.index for segment in segments for frame in segment.frames]
    decoded = read_frames(path, info, indices, transform=_frame_and_thumbnail,
                          max_workers=settings.decode_threads or None, reader=settings.frame_reader)
    put_bytes(store, segment_batch_key(job.tenant_id, job.index_id, job.video_id, batch),
         encode_bundle(np.stack([tile for tile, _ in decoded])))
    rows = []
    for offset, segment in enumerate(segments):
        seq = first_seq + offset
        # The thumbnail is the segment's middle sampled frame.
        _, small = decoded[offset * job.frames_per_segment + len(segment.frames) // 2]
        thumb = thumbnail_key(job.tenant_id, job.index_id, job.video_id, seq)
        put_bytes(store, thumb, _jpeg(small))
        rows.append({
            "index_id": job.index_id, "video_id": job.video_id, "position": job.position,
            "external_id": job.external_id, "seq": seq, "batch": batch, "start_s": round(segment.start_s, 3),
            "end_s": round(segment.end_s, 3), "frames": [frame.as_dict() for frame in segment.frames],
            "text": None, "thumbnail_key": thumb, "created_at": utcnow(),
        })
    with session_scope(database_url) as session:
        connection = session.connection()
        dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
        # A second cut of the same video (after a crash) finds its rows there already.
        connection.execute(dialect_insert(IndexSegment).on_conflict_do_nothing(), rows)
