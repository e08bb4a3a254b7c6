"""Every status and counter change of an index and its videos, as compare-and-set UPDATEs.

Work is split over processes (the frames worker cuts a video, inference workers caption batches of
its segments) and any task may run twice. So a segment's text is written only where it is still
empty, counters move by the number of rows a write really changed, and a video or index finishes by
one conditional UPDATE that only the first of two racing writers wins.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db.models import IndexSegment, IndexVideo, VideoIndex, utcnow
from shared.webhooks.events import record_index_event

ACTIVE = ("queued", "running")


def claim_video(session: Session, video_id: str, *, lease_s: float) -> IndexVideo | None:
    """queued → running for the frames worker (and its index queued → running); None when the
    video is not queued (done, canceled, or another worker has it)."""
    now = utcnow()
    claimed = session.execute(
        update(IndexVideo)
        .where(IndexVideo.id == video_id, IndexVideo.status == "queued")
        .values(status="running", attempts=IndexVideo.attempts + 1, lease_expires_at=now + timedelta(seconds=lease_s))
    ).rowcount
    if claimed != 1:
        return None
    video = session.get(IndexVideo, video_id, populate_existing=True)
    session.execute(
        update(VideoIndex).where(VideoIndex.id == video.index_id, VideoIndex.status == "queued")
        .values(status="running", started_at=now)
    )
    return video


def renew_video_lease(session: Session, video_id: str, *, attempt: int, lease_s: float) -> bool:
    renewed = session.execute(
        update(IndexVideo)
        .where(IndexVideo.id == video_id, IndexVideo.status == "running", IndexVideo.attempts == attempt)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    ).rowcount
    return renewed == 1


def requeue_lapsed_videos(session: Session, *, limit: int = 200) -> list[str]:
    """Running videos whose frames worker died (lease lapsed, segments not all cut) → queued."""
    ids = list(session.scalars(
        select(IndexVideo.id)
        .where(IndexVideo.status == "running", IndexVideo.lease_expires_at < utcnow())
        .order_by(IndexVideo.id).limit(limit)
    ))
    requeued = []
    for video_id in ids:
        if session.execute(
            update(IndexVideo).where(IndexVideo.id == video_id, IndexVideo.status == "running",
                                     IndexVideo.lease_expires_at < utcnow())
            .values(status="queued", lease_expires_at=None)
        ).rowcount:
            requeued.append(video_id)
    return requeued


def requeue_video(session: Session, video_id: str) -> None:
    """running → queued before a retry of its cutting (a storage hiccup), so the retry can claim it."""
    session.execute(update(IndexVideo).where(IndexVideo.id == video_id, IndexVideo.status == "running")
                    .values(status="queued", lease_expires_at=None))


def video_cut(session: Session, video_id: str, *, attempt: int) -> None:
    """Every segment of the video is stored and handed to inference: no lease is needed any more
    (a lost caption batch is found by its empty segments, not by a lease)."""
    session.execute(
        update(IndexVideo).where(IndexVideo.id == video_id, IndexVideo.attempts == attempt)
        .values(lease_expires_at=None)
    )


def set_video_plan(session: Session, video_id: str, *, object_key: str, duration_s: float, segments_total: int,
                   attempt: int) -> bool:
    return session.execute(
        update(IndexVideo)
        .where(IndexVideo.id == video_id, IndexVideo.status == "running", IndexVideo.attempts == attempt)
        .values(object_key=object_key, duration_s=duration_s, segments_total=segments_total)
    ).rowcount == 1


def fail_video(session: Session, video_id: str, *, code: str, message: str) -> bool:
    """queued|running → failed; the index counts it and may complete."""
    video = session.get(IndexVideo, video_id)
    if video is None:
        return False
    failed = session.execute(
        update(IndexVideo).where(IndexVideo.id == video_id, IndexVideo.status.in_(ACTIVE))
        .values(status="failed", error={"code": code, "message": message[:500]}, finished_at=utcnow(),
                lease_expires_at=None)
    ).rowcount
    if failed != 1:
        return False
    session.execute(
        update(VideoIndex).where(VideoIndex.id == video.index_id)
        .values(videos_failed=VideoIndex.videos_failed + 1)
    )
    complete_if_done(session, video.index_id)
    return True


def record_captions(session: Session, video_id: str, texts: dict[int, str]) -> int:
    """Segment id → caption, written only into empty segments; returns how many were new. Finishes
    the video when its last segment got its text."""
    written = 0
    for segment_id, text in texts.items():
        written += session.execute(
            update(IndexSegment).where(IndexSegment.id == segment_id, IndexSegment.text.is_(None)).values(text=text)
        ).rowcount
    if not written:
        return 0
    video = session.get(IndexVideo, video_id)
    session.execute(
        update(IndexVideo).where(IndexVideo.id == video_id).values(segments_done=IndexVideo.segments_done + written)
    )
    session.execute(
        update(VideoIndex).where(VideoIndex.id == video.index_id)
        .values(segments_done=VideoIndex.segments_done + written)
    )
    _finish_video_if_captioned(session, video_id, video.index_id)
    return written


def _finish_video_if_captioned(session: Session, video_id: str, index_id: str) -> None:
    finished = session.execute(
        update(IndexVideo)
        .where(IndexVideo.id == video_id, IndexVideo.status == "running",
               IndexVideo.segments_total.is_not(None), IndexVideo.segments_done >= IndexVideo.segments_total)
        .values(status="succeeded", finished_at=utcnow(), lease_expires_at=None)
    ).rowcount
    if finished:
        session.execute(update(VideoIndex).where(VideoIndex.id == index_id).values(videos_done=VideoIndex.videos_done + 1))
        complete_if_done(session, index_id)


def complete_if_done(session: Session, index_id: str) -> bool:
    """running|queued → succeeded once every video is done or failed; records video_index.completed."""
    completed = session.execute(
        update(VideoIndex)
        .where(VideoIndex.id == index_id, VideoIndex.status.in_(ACTIVE),
               VideoIndex.videos_done + VideoIndex.videos_failed >= VideoIndex.videos_total)
        .values(status="succeeded", finished_at=utcnow())
    ).rowcount
    if completed:
        record_index_event(session, index_id, "video_index.completed")
    return completed == 1


def cancel_index(session: Session, index_id: str) -> bool:
    """queued|running → canceled, with every video not yet finished; False when already finished."""
    now = utcnow()
    canceled = session.execute(
        update(VideoIndex).where(VideoIndex.id == index_id, VideoIndex.status.in_(ACTIVE))
        .values(status="canceled", finished_at=now)
    ).rowcount
    if canceled:
        session.execute(
            update(IndexVideo).where(IndexVideo.index_id == index_id, IndexVideo.status.in_(ACTIVE))
            .values(status="canceled", finished_at=now, lease_expires_at=None)
        )
    return canceled == 1


def index_is_active(session: Session, index_id: str) -> bool:
    return session.scalar(select(VideoIndex.status).where(VideoIndex.id == index_id)) in ACTIVE
