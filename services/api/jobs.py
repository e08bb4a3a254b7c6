"""Job creation, lookup and listing for the API; status changes go through ``shared.jobs`` only."""

from __future__ import annotations

import base64
import binascii
import logging

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.api.errors import DependencyDown, NotFound, ValidationFailed
from services.api.ingest import StoredMedia
from services.api.schemas import JobPublic, JobSpec
from shared.db.models import Job, JobResult, Media
from shared.ids import new_id
from shared.jobs import JobStatus, JobTask, StaleTransition, fail_job
from shared.queue import INFERENCE_QUEUE, task_name_for

log = logging.getLogger("vlmq.api")


def check_media_fits_task(spec: JobSpec, media: list[StoredMedia]) -> None:
    videos = [item for item in media if not item.is_image]
    if spec.task.is_video:
        if len(media) != 1 or len(videos) != 1:
            raise ValidationFailed(f"task {spec.task.value} needs exactly one video", code="invalid_input")
    elif videos:
        raise ValidationFailed(f"task {spec.task.value} takes images, not video", code="invalid_input")
    elif not media and spec.task is not JobTask.chat:
        raise ValidationFailed(f"task {spec.task.value} needs at least one image", code="invalid_input")


def record_media(session: Session, tenant_id: str, media: list[StoredMedia]) -> None:
    for item in media:
        if session.get(Media, (tenant_id, item.object_key)) is None:
            session.add(
                Media(
                    tenant_id=tenant_id,
                    object_key=item.object_key,
                    content_type=item.content_type,
                    size_bytes=item.size_bytes,
                    sha256=item.sha256,
                    width=item.width,
                    height=item.height,
                    duration_s=item.duration_s,
                    fps=item.fps,
                )
            )


def known_media(session: Session, tenant_id: str, object_key: str) -> StoredMedia | None:
    row = session.get(Media, (tenant_id, object_key))
    if row is None:
        return None
    return StoredMedia(
        row.object_key, row.content_type, row.size_bytes, row.sha256, row.width, row.height, row.duration_s, row.fps
    )


def insert_job(session: Session, *, tenant_id: str, spec: JobSpec, model_id: str, media: list[StoredMedia]) -> Job:
    """The media rows and the job row, committed together: a job never points at unknown media."""
    record_media(session, tenant_id, media)
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        status=JobStatus.queued.value,
        task=spec.task.value,
        model=model_id,
        prompt=spec.prompt,
        history=[turn.model_dump() for turn in spec.history] if spec.history else None,
        options=spec.options.model_dump(),
        metadata_=spec.metadata,
        input={"items": [item.as_input_item() for item in media]},
        webhook=spec.webhook.model_dump(mode="json") if spec.webhook else None,
        stream=spec.stream,
        attempts=0,
    )
    session.add(job)
    session.commit()
    return job


def enqueue_job(session: Session, celery: Celery, job: Job) -> None:
    """Ring the broker's doorbell; if it cannot be reached the job fails visibly, not silently."""
    try:
        celery.send_task(task_name_for(job.task), args=[job.id], queue=INFERENCE_QUEUE, retry=False)
    except Exception as error:  # kombu raises several unrelated types for a broker that is down
        log.error("could not enqueue %s: %s", job.id, error)
        try:
            fail_job(
                session, job.id, from_status=JobStatus.queued, attempt=0, code="queue_unavailable",
                message="the job queue could not be reached",
            )
            session.commit()
        except StaleTransition:
            session.rollback()
        raise DependencyDown("the job queue is not reachable; the job was not started") from error


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:  # another tenant's job does not exist for you
        raise NotFound(f"no job {job_id}", code="job_not_found")
    return job


def job_public(session: Session, job: Job) -> JobPublic:
    result = session.get(JobResult, job.id) if job.status == JobStatus.succeeded.value else None
    return JobPublic(
        id=job.id,
        status=job.status,
        task=job.task,
        model=job.model,
        prompt=job.prompt,
        history=job.history,
        options=job.options,
        metadata=job.metadata_,
        input=job.input,
        result=result.result if result else None,
        error=job.error,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def encode_cursor(job_id: str) -> str:
    return base64.urlsafe_b64encode(job_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        job_id = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise ValidationFailed("invalid cursor", code="invalid_cursor") from error
    if not job_id.startswith("job_"):
        raise ValidationFailed("invalid cursor", code="invalid_cursor")
    return job_id


def list_jobs(
    session: Session, tenant_id: str, *, status: str | None, task: str | None, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """Newest first; ids sort by creation time, so the cursor is the last id seen."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        query = query.where(Job.status == status)
    if task:
        query = query.where(Job.task == task)
    if cursor:
        query = query.where(Job.id < decode_cursor(cursor))
    jobs = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    if len(jobs) > limit:
        return jobs[:limit], encode_cursor(jobs[limit - 1].id)
    return jobs, None
