"""The frames worker's task: give a queued video job its sampled frames, then hand it to its model's
queue. The job stays ``queued`` throughout (no GPU has it yet), so cancel needs nothing special.

Idempotent: a job that is not queued, or already has frames, is only passed on; the frame bundle's
key is the job's own, so a duplicate delivery rewrites the same bytes; recording the frames is a
compare-and-set on "queued, no frames yet".
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shared.config.settings import FramesSettings
from shared.db.engine import session_scope
from shared.db.media_rows import record_media
from shared.db.models import Job, Media
from shared.jobs import (
    JobStatus,
    StaleTransition,
    fail_job,
    mark_enqueued,
    record_fetched_input,
    record_prepared_frames,
)
from shared.logs import about_job
from shared.media import StoredMedia
from shared.media.fetch import FetchFailed, FetchLimits, fetch_media
from shared.storage import ObjectStore, StorageError, frames_key, put_bytes
from workers.frames.extract import ExtractionFailed, encode_bundle, extract_frames

log = logging.getLogger("vlmq.frames")

# Publish a job id to its model's queue once its frames are recorded: (job_id, task, model).
HandOn = Callable[[str, str, str], None]


class RetryLater(Exception):
    """A transient failure (storage); the task is retried with backoff."""


def prepare_job(job_id: str, *, settings: FramesSettings, store: ObjectStore, hand_on: HandOn,
                last_try: bool = True) -> str:
    """Returns what happened: ``prepared``, ``handed_on`` (it had frames), ``skipped`` or ``failed``."""
    with about_job(job_id):
        return _prepare(job_id, settings, store, hand_on, last_try)


def _prepare(job_id: str, settings: FramesSettings, store: ObjectStore, hand_on: HandOn, last_try: bool) -> str:
    database_url = settings.resolved_database_url
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.queued.value:
            log.info("job %s is %s: nothing to prepare", job_id, job.status if job else "gone")
            return "skipped"
        if job.prepared is not None:  # prepared before; the hand-on message was lost
            hand_on(job_id, job.task, job.model)
            return "handed_on"
        mark_enqueued(session, [job_id])  # the reaper's clock: this job is being worked on
        tenant_id, task, model_id, attempts = job.tenant_id, job.task, job.model, job.attempts
        items, options = [dict(item) for item in job.input.get("items", [])], dict(job.options)
    try:
        item = _video_item(items, tenant_id, job_id, attempts, settings=settings, store=store, database_url=database_url)
        extracted = extract_frames(store, item["object_key"], options, settings=settings,
                                   decode_threads=settings.decode_threads, reader=settings.frame_reader)
        key = frames_key(tenant_id, job_id)
        _write(store, key, encode_bundle(extracted.tiles))
    except ExtractionFailed as failure:
        if failure.transient and not last_try:
            raise RetryLater(failure.message) from None
        return _fail(database_url, job_id, failure.code, failure.message)
    video = extracted.video
    item.update(width=video.width, height=video.height, duration_s=round(video.duration_s, 3), fps=video.fps)
    with session_scope(database_url) as session:
        try:
            record_prepared_frames(session, job_id, prepared={"frames_key": key, **extracted.describe()}, items=items)
        except StaleTransition:
            log.info("job %s changed while its frames were extracted (canceled or deleted)", job_id)
            _discard(store, key)
            return "skipped"
        session.query(Media).filter(Media.tenant_id == tenant_id, Media.object_key == item["object_key"]).update(
            {"width": video.width, "height": video.height, "duration_s": item["duration_s"], "fps": video.fps}
        )
    log.info("job %s: %d frames of %s (%.0f ms, %s)", job_id, len(extracted.frames), item["object_key"],
             extracted.decode_ms, video.decoder)
    hand_on(job_id, task, model_id)
    return "prepared"


def _video_item(items: list[dict], tenant_id: str, job_id: str, attempts: int, *, settings: FramesSettings,
                store: ObjectStore, database_url: str) -> dict:
    """The job's one video item, fetched first when it was given by URL."""
    if len(items) != 1:
        raise ExtractionFailed("invalid_input", "a video task takes exactly one video")
    item = items[0]
    if item.get("object_key"):
        return item
    try:
        media = fetch_media(item["url"], limits=FetchLimits.from_settings(settings), store=store, tenant_id=tenant_id)
    except FetchFailed as failure:
        raise ExtractionFailed(failure.code, failure.message, transient=failure.transient) from None
    if media.is_image:
        raise ExtractionFailed("invalid_input", f"a video task needs a video; {media.url} is {media.content_type}")
    items[0] = item = media.as_input_item()
    with session_scope(database_url) as session:
        _record_fetched(session, job_id, attempts, items, media, tenant_id)
    return item


def _record_fetched(session, job_id: str, attempts: int, items: list[dict], media: StoredMedia, tenant_id: str) -> None:
    record_media(session.connection(), tenant_id, [media])
    try:
        record_fetched_input(session, job_id, attempt=attempts, items=items, status=JobStatus.queued)
    except StaleTransition:
        raise ExtractionFailed("canceled", "the job changed while its video was fetched") from None


def _write(store: ObjectStore, key: str, data: bytes) -> None:
    try:
        put_bytes(store, key, data)
    except StorageError as error:
        raise ExtractionFailed("media_unavailable", f"frames could not be stored: {error}", transient=True) from error


def _discard(store: ObjectStore, key: str) -> None:
    try:
        store.delete(key)
    except StorageError:
        log.warning("could not delete the frames %s of a job that no longer needs them", key)


def _fail(database_url: str, job_id: str, code: str, message: str) -> str:
    with session_scope(database_url) as session:
        try:
            fail_job(session, job_id, from_status=JobStatus.queued, attempt=None, code=code, message=message)
        except StaleTransition:
            return "skipped"  # canceled or taken meanwhile
    log.info("job %s failed before inference: %s: %s", job_id, code, message)
    return "failed"
