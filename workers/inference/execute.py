"""Run one job: claim it, load its media, call the runtime, record the outcome.

Idempotent: a job that is no longer queued (a duplicate delivery, a deleted job) is left alone, and
every status change is a compare-and-set through ``shared.jobs``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

from PIL import Image, UnidentifiedImageError

from shared.config.settings import WorkerSettings
from shared.db.engine import session_scope
from shared.db.models import Job, utcnow
from shared.jobs import JobStatus, JobTask, StaleTransition, fail_job, finish_job, start_job
from shared.jobs.states import RUNNABLE_TASKS
from shared.storage import ObjectStore, StorageError
from workers.inference.runtime.requests import GenerationRequest, GenerationResult

log = logging.getLogger("vlmq.worker")


class JobFailure(Exception):
    """A permanent failure with a reason code for the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _load_images(store: ObjectStore, items: list[dict]) -> list[Image.Image]:
    images = []
    for item in items:
        try:
            data = store.read(item["object_key"])
        except StorageError as error:
            raise JobFailure("media_unavailable", f"media {item['object_key']} could not be read: {error}") from error
        try:
            with Image.open(io.BytesIO(data)) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise JobFailure("invalid_media", f"the image could not be decoded: {error}") from error
    return images


def _request_for(job: Job, images: list[Image.Image]) -> GenerationRequest:
    options = job.options
    return GenerationRequest(
        task=job.task,
        prompt=job.prompt,
        images=images,
        max_tiles=options.get("max_tiles", 12),
        max_tiles_total=options.get("max_tiles_total"),
        multi_image=options.get("multi_image", "numbered"),
        history=[(turn["user"], turn["assistant"]) for turn in job.history or []],
        max_new_tokens=options.get("max_new_tokens", 512),
        temperature=options.get("temperature", 0.0),
        top_p=options.get("top_p"),
    )


def _result_body(job: Job, result: GenerationResult) -> dict:
    finished = utcnow()
    body = {
        "text": result.text,
        "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens, "tiles": result.tiles},
        "timings_ms": {
            "queue": round((job.started_at - job.created_at).total_seconds() * 1000, 1),
            "preprocess": round(result.preprocess_ms, 1),
            "inference": round(result.inference_ms, 1),
            "total": round((finished - job.created_at).total_seconds() * 1000, 1),
        },
    }
    if result.boxes is not None:
        body["boxes"] = result.boxes
    return body


def execute_job(
    job_id: str,
    *,
    settings: WorkerSettings,
    store: ObjectStore,
    run_batch: Callable[[str, list[GenerationRequest]], list[GenerationResult]],
) -> str | None:
    """Returns the job's final status, or None when this delivery had nothing to do."""
    database_url = settings.resolved_database_url
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.queued.value:
            log.info("job %s is %s: nothing to do", job_id, job.status if job else "gone")
            return None
        try:
            attempt = start_job(session, job_id, seen_attempts=job.attempts)
        except StaleTransition:
            return None
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        try:
            if JobTask(job.task) not in RUNNABLE_TASKS:
                raise JobFailure("unsupported_task", f"this deployment cannot run {job.task} jobs yet")
            images = _load_images(store, job.input.get("items", []))
            (result,) = run_batch(job.model, [_request_for(job, images)])
            body = _result_body(job, result)
        except JobFailure as failure:
            fail_job(session, job_id, from_status=JobStatus.running, attempt=attempt, code=failure.code, message=failure.message)
            return JobStatus.failed.value
        except Exception as error:  # the model or a library broke: fail the job, keep the worker
            log.exception("job %s failed", job_id)
            fail_job(
                session, job_id, from_status=JobStatus.running, attempt=attempt, code="model_error",
                message=f"{type(error).__name__}: {error}"[:500],
            )
            return JobStatus.failed.value
        finish_job(session, job_id, attempt=attempt, result=body)
        return JobStatus.succeeded.value
