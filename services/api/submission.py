"""The write path of ``POST /v1/jobs``: media rows, the job row, the enqueue.

It is the API's hot path, so it speaks SQLAlchemy Core on one connection: one query to learn known
media, one transaction to write media and job, one broker publish. Status changes after creation
belong to ``shared.jobs``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from sqlalchemy import Connection, insert, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from services.api.errors import DependencyDown, ValidationFailed
from services.api.ingest import StoredMedia
from services.api.schemas import JobPublic, JobSpec
from shared.db.engine import session_scope
from shared.db.models import Job, Media, utcnow
from shared.ids import new_id
from shared.jobs import JobStatus, JobTask, StaleTransition, fail_job
from shared.queue import INFERENCE_QUEUE, task_name_for

log = logging.getLogger("vlmq.api")
media_table = Media.__table__
jobs_table = Job.__table__
_MEDIA_FIELDS = ("object_key", "content_type", "size_bytes", "sha256", "width", "height", "duration_s", "fps")


def check_media_fits_task(spec: JobSpec, media: list[StoredMedia]) -> None:
    videos = [item for item in media if not item.is_image]
    if spec.task.is_video:
        if len(media) != 1 or len(videos) != 1:
            raise ValidationFailed(f"task {spec.task.value} needs exactly one video", code="invalid_input")
    elif videos:
        raise ValidationFailed(f"task {spec.task.value} takes images, not video", code="invalid_input")
    elif not media and spec.task is not JobTask.chat:
        raise ValidationFailed(f"task {spec.task.value} needs at least one image", code="invalid_input")


def known_media(connection: Connection, tenant_id: str, object_keys: list[str]) -> dict[str, StoredMedia]:
    """What the media table already knows of these keys, in one query."""
    columns = [media_table.c[name] for name in _MEDIA_FIELDS]
    rows = connection.execute(
        select(*columns).where(media_table.c.tenant_id == tenant_id, media_table.c.object_key.in_(object_keys))
    )
    return {row.object_key: StoredMedia(*row, recorded=True) for row in rows}


def _insert_media_ignoring_duplicates(connection: Connection):
    """INSERT … ON CONFLICT DO NOTHING: content-addressed rows may race benignly."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    return dialect_insert(media_table).on_conflict_do_nothing()


def insert_job(
    connection: Connection, *, tenant_id: str, spec: JobSpec, model_id: str, media: list[StoredMedia]
) -> dict[str, Any]:
    """Media rows and the job row in the caller's transaction: a job never points at unknown media."""
    now = utcnow()
    new_media = [{"tenant_id": tenant_id, "created_at": now, **item.as_input_item()} for item in media if not item.recorded]
    if new_media:
        connection.execute(_insert_media_ignoring_duplicates(connection), new_media)
    row = {
        "id": new_id("job"),
        "tenant_id": tenant_id,
        "status": JobStatus.queued.value,
        "task": spec.task.value,
        "model": model_id,
        "prompt": spec.prompt,
        "history": [turn.model_dump() for turn in spec.history] if spec.history else None,
        "options": spec.options.model_dump(),
        "metadata": spec.metadata,
        "input": {"items": [item.as_input_item() for item in media]},
        "webhook": spec.webhook.model_dump(mode="json") if spec.webhook else None,
        "stream": spec.stream,
        "error": None,
        "attempts": 0,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
    }
    connection.execute(insert(jobs_table), row)
    return row


def public_from_row(row: dict[str, Any]) -> JobPublic:
    return JobPublic.model_validate({**row, "result": None})


def enqueue_job(celery: Celery, database_url: str, row: dict[str, Any]) -> None:
    """Ring the broker's doorbell; if it cannot be reached the job fails visibly, not silently."""
    try:
        celery.send_task(task_name_for(row["task"]), args=[row["id"]], queue=INFERENCE_QUEUE, retry=False)
    except Exception as error:  # kombu raises several unrelated types for a broker that is down
        log.error("could not enqueue %s: %s", row["id"], error)
        try:
            with session_scope(database_url) as session:
                fail_job(
                    session, row["id"], from_status=JobStatus.queued, attempt=0, code="queue_unavailable",
                    message="the job queue could not be reached",
                )
        except StaleTransition:
            pass
        raise DependencyDown("the job queue is not reachable; the job was not started") from error
