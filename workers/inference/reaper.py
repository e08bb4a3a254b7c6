"""The database is the source of truth; the broker is only a doorbell. The reaper rings it again.

Every worker's main process runs one (a thread; no torch there). Each pass:
- running jobs whose lease lapsed (their worker died mid-job) go back to queued and are published
  again, so another worker re-runs them — while the broker's own redelivery (visibility timeout,
  hours) stays far longer than any healthy job;
- queued jobs not published for ``requeue_after_s`` are published again when their model's queue
  is empty — the broker lost their messages (a Redis restart without persistence). A duplicate
  message is harmless: starting a job is a compare-and-set, so only one delivery runs it.
Reapers in several workers may race; every change is a compare-and-set.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy import select

from shared.config.settings import WorkerSettings
from shared.db.engine import session_scope
from shared.db.models import IndexSegment, IndexVideo, Job, VideoIndex, utcnow
from shared.indexes.progress import requeue_lapsed_videos
from shared.jobs import JobStatus, mark_enqueued, requeue_expired_leases
from shared.periodic import PeriodicPass
from shared.queue import (
    CAPTION_SEGMENTS_TASK,
    FRAMES_QUEUE,
    INDEX_VIDEO_TASK,
    queue_for,
    route_for,
)

log = logging.getLogger("vlmq.reaper")


class Reaper(PeriodicPass):
    name = "vlmq-reaper"

    def __init__(self, app: Celery, settings: WorkerSettings):
        super().__init__(settings.reaper_interval_s, log)
        self.app, self.settings = app, settings
        self.database_url = settings.resolved_database_url

    def run_once(self) -> tuple[int, int]:
        """Returns (jobs requeued after a lapsed lease, queued jobs re-published)."""
        with session_scope(self.database_url) as session:
            requeued = requeue_expired_leases(session)
            expired = self._rows(session, Job.id.in_(requeued)) if requeued else []
        self._publish(expired)
        republished = 0
        for model_id in self.settings.model_sources:
            cutoff = utcnow() - timedelta(seconds=self.settings.requeue_after_s)
            with session_scope(self.database_url) as session:
                stale = self._rows(
                    session,
                    Job.status == JobStatus.queued.value,
                    Job.model == model_id,
                    Job.enqueued_at < cutoff,
                )
            # Only into an empty queue: a message still waiting there would be a duplicate.
            lost = [row for row in stale if self._queue_length(self._route(row)[1]) == 0]
            if lost:
                self._publish(lost)
                with session_scope(self.database_url) as session:
                    mark_enqueued(session, [row[0] for row in lost])
                republished += len(lost)
        republished += self._index_videos()
        if expired or republished:
            log.info("reaper: %d jobs requeued after a lapsed lease, %d lost messages re-published",
                     len(expired), republished)
        return len(expired), republished

    def _index_videos(self) -> int:
        """Index videos whose frames worker died (lease lapsed) are queued again, and queued ones
        whose message was lost (old, frames queue empty) are published again."""
        with session_scope(self.database_url) as session:
            lapsed = requeue_lapsed_videos(session)
        cutoff = utcnow() - timedelta(seconds=self.settings.requeue_after_s)
        stale: list[str] = []
        if self._queue_length(FRAMES_QUEUE) == 0:
            with session_scope(self.database_url) as session:
                stale = list(session.scalars(
                    select(IndexVideo.id).where(IndexVideo.status == "queued", IndexVideo.created_at < cutoff)
                    .order_by(IndexVideo.id).limit(1000)
                ))
        videos = list(dict.fromkeys(lapsed + stale))
        for video_id in videos:
            self.app.send_task(INDEX_VIDEO_TASK, args=[video_id], queue=FRAMES_QUEUE)
        return len(videos) + self._caption_batches(cutoff)

    def _caption_batches(self, cutoff) -> int:
        """Batches of fully cut videos still waiting for captions long after they were cut, while
        their model's queue is empty: the broker lost their message; publish it again."""
        with session_scope(self.database_url) as session:
            waiting = session.execute(
                select(IndexSegment.video_id, IndexSegment.batch, VideoIndex.model).distinct()
                .join(IndexVideo, IndexVideo.id == IndexSegment.video_id)
                .join(VideoIndex, VideoIndex.id == IndexSegment.index_id)
                .where(IndexVideo.status == "running", IndexVideo.lease_expires_at.is_(None),
                       IndexSegment.text.is_(None), IndexSegment.created_at < cutoff)
                .limit(1000)
            ).all()
        lost = [row for row in waiting if self._queue_length(queue_for(row.model)) == 0]
        for video_id, batch, model_id in lost:
            self.app.send_task(CAPTION_SEGMENTS_TASK, args=[video_id, batch], queue=queue_for(model_id))
        return len(lost)

    @staticmethod
    def _rows(session, *conditions, limit: int = 1000) -> list[tuple[str, str, str, bool]]:
        """(id, task, model, whether its frames are prepared) of the matching jobs."""
        statement = (
            select(Job.id, Job.task, Job.model, Job.prepared.is_not(None)).where(*conditions).order_by(Job.id).limit(limit)
        )
        return [tuple(row) for row in session.execute(statement).all()]

    @staticmethod
    def _route(row: tuple[str, str, str, bool]) -> tuple[str, str]:
        _, task, model_id, prepared = row
        return route_for(task, model_id, prepared=prepared)

    def _publish(self, rows: list[tuple[str, str, str, bool]]) -> None:
        for row in rows:
            task_name, queue = self._route(row)
            self.app.send_task(task_name, args=[row[0]], queue=queue)

    def _queue_length(self, queue: str) -> int:
        try:
            with self.app.connection_for_write() as connection:
                return connection.default_channel.queue_declare(queue=queue, passive=True).message_count
        except Exception:  # an empty Redis queue does not exist at all: passive declare refuses it
            return 0
