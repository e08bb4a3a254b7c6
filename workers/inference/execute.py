"""Run one job: claim it, load its media, call the runtime, record the outcome.

Idempotent: a job that is no longer queued (a duplicate delivery, a deleted job) is left alone, and
every status change is a compare-and-set through ``shared.jobs``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from PIL import Image

from shared.config.settings import WorkerSettings
from shared.db.engine import session_scope
from shared.db.models import Job, utcnow
from shared.jobs import (
    JobStatus,
    JobTask,
    StaleTransition,
    fail_job,
    finish_job,
    requeue_job,
    start_job,
)
from shared.jobs.states import RUNNABLE_TASKS
from shared.logs import about_job
from shared.metrics import record
from shared.storage import ObjectStore
from workers.inference.failures import AttemptStopped, JobFailure, TransientFailure
from workers.inference.lease import LeaseHeartbeat
from workers.inference.media import (
    VideoFrames,
    discard_prepared_frames,
    fetch_pending_urls,
    load_images,
    load_video_frames,
)
from workers.inference.runtime.requests import GenerationRequest, GenerationResult

log = logging.getLogger("vlmq.worker")


# Re-publish a job id after a delay: (job_id, task, model, delay_s).
RetryLater = Callable[[str, str, str, float], None]


def _request_for(job: Job, images: list[Image.Image], *, frames: list | None = None) -> GenerationRequest:
    options = job.options
    return GenerationRequest(
        task=job.task,
        prompt=job.prompt,
        images=images,
        frames=frames or [],
        max_tiles=1 if frames else options.get("max_tiles", 12),
        max_tiles_total=options.get("max_tiles_total"),
        multi_image=options.get("multi_image", "numbered"),
        history=[(turn["user"], turn["assistant"]) for turn in job.history or []],
        max_new_tokens=options.get("max_new_tokens", 512),
        temperature=options.get("temperature", 0.0),
        top_p=options.get("top_p"),
    )


def _result_body(job: Job, result: GenerationResult, video: VideoFrames | None = None) -> dict:
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
    if video is not None:
        body["frames"] = video.frames
        # Decoding ran on the frames worker, off this GPU worker's path: reported apart.
        body["timings_ms"]["decode"] = round(video.decode_ms, 1)
        body["timings_ms"]["preprocess"] = round(result.preprocess_ms + video.load_ms, 1)
    return body


RunBatch = Callable[[str, list[GenerationRequest], Callable[[], bool]], list[GenerationResult]]


def execute_job(
    job_id: str, *, settings: WorkerSettings, store: ObjectStore, run_batch: RunBatch, retry_later: RetryLater | None = None,
    handing_back: Callable[[], bool] = lambda: False,
) -> str | None:
    """Returns the job's final status, or None when this delivery had nothing to do (a duplicate,
    or an attempt that lost its lease to a cancel or a requeue). ``handing_back`` turns true when
    the worker is shutting down and the job must go back to the queue (``workers.inference.drain``)."""
    with about_job(job_id):
        return _execute(job_id, settings, store, run_batch, retry_later, handing_back)


def _execute(job_id: str, settings: WorkerSettings, store: ObjectStore, run_batch: RunBatch,
             retry_later: RetryLater | None, handing_back: Callable[[], bool]) -> str | None:
    database_url = settings.resolved_database_url
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.queued.value:
            log.info("job %s is %s: nothing to do", job_id, job.status if job else "gone")
            return None
        timeout_s = settings.timeout_for(job.task)
        try:
            attempt = start_job(session, job_id, seen_attempts=job.attempts, lease_s=settings.lease_s)
        except StaleTransition:
            return None
    log.info("job %s attempt %d started", job_id, attempt)
    heartbeat = LeaseHeartbeat(
        database_url, job_id, attempt, lease_s=settings.lease_s, interval_s=settings.heartbeat_s, deadline_s=timeout_s
    )
    stopped_to_hand_back: list[bool] = []

    def stop_when() -> bool:
        if heartbeat.should_stop():
            return True
        if retry_later is not None and handing_back():
            stopped_to_hand_back.append(True)
            return True
        return False

    with heartbeat, session_scope(database_url) as session:
        job = session.get(Job, job_id)
        try:
            if JobTask(job.task) not in RUNNABLE_TASKS:
                raise JobFailure("unsupported_task", f"this deployment cannot run {job.task} jobs yet")
            try:
                items = fetch_pending_urls(session, job, attempt, store=store, settings=settings,
                                           should_stop=stop_when)
                if JobTask(job.task).is_video:
                    video = load_video_frames(job, items, store=store, settings=settings)
                    request = _request_for(job, [], frames=video.tiles)
                else:
                    video, request = None, _request_for(job, load_images(store, items))
                (result,) = run_batch(job.model, [request], stop_when)
            except AttemptStopped:
                result = None
            if stopped_to_hand_back and not heartbeat.lost.is_set():  # a cut-short result is worthless
                return _hand_back(session, job, attempt, retry_later)
            if heartbeat.lost.is_set():  # canceled or requeued while running: this attempt writes nothing
                done = f"after {result.output_tokens} tokens" if result is not None else "before generating"
                log.info("job %s attempt %d stopped %s: lease lost", job_id, attempt, done)
                return None
            if heartbeat.timed_out():
                raise JobFailure("timeout", f"the job ran longer than {timeout_s:g} s")
            body = _result_body(job, result, video)
        except StaleTransition:  # the attempt lost the job while recording fetched media
            session.rollback()
            return None
        except TransientFailure as failure:
            if retry_later is None or attempt >= settings.max_attempts:
                return _fail(session, job_id, attempt, failure.code, f"{failure.message} (after {attempt} attempts)")
            return _retry(session, job, attempt, failure, settings, retry_later)
        except JobFailure as failure:
            return _fail(session, job_id, attempt, failure.code, failure.message)
        except torch_out_of_memory() as error:
            return _fail(session, job_id, attempt, "out_of_memory", f"the job does not fit in GPU memory even with 1 tile: {error}"[:500])
        except Exception as error:  # the model or a library broke: fail the job, keep the worker
            log.exception("job %s failed", job_id)
            return _fail(session, job_id, attempt, "model_error", f"{type(error).__name__}: {error}"[:500])
        try:
            finish_job(session, job_id, attempt=attempt, result=body)
        except StaleTransition:
            log.info("job %s attempt %d finished after losing its lease: result rejected", job_id, attempt)
            return None
        session.commit()
        record.job_stages(job.task, job.model, body["timings_ms"])
        discard_prepared_frames(store, job)
        return JobStatus.succeeded.value


def _hand_back(session, job: Job, attempt: int, retry_later: RetryLater) -> str | None:
    """The worker is shutting down: back to queued, published again at once for another worker."""
    try:
        requeue_job(session, job.id, attempt=attempt)
    except StaleTransition:
        return None
    session.commit()
    log.info("job %s attempt %d handed back: the worker is shutting down", job.id, attempt)
    retry_later(job.id, job.task, job.model, 0.0)
    return JobStatus.queued.value


def _retry(session, job: Job, attempt: int, failure: TransientFailure, settings: WorkerSettings,
           retry_later: RetryLater) -> str | None:
    """Back to queued, published again after an exponential backoff."""
    delay = min(settings.retry_backoff_s * 2 ** (attempt - 1), 300.0)
    try:
        requeue_job(session, job.id, attempt=attempt)
    except StaleTransition:
        return None
    session.commit()  # queued before the message exists, so its delivery finds the job runnable
    log.warning("job %s attempt %d: %s; retrying in %.0f s", job.id, attempt, failure.message, delay)
    retry_later(job.id, job.task, job.model, delay)
    return JobStatus.queued.value


def torch_out_of_memory() -> type[BaseException]:
    """torch's out-of-memory error, without importing torch where it is not loaded."""
    torch = sys.modules.get("torch")
    return torch.OutOfMemoryError if torch is not None else _Never


class _Never(Exception):
    pass


def _fail(session, job_id: str, attempt: int, code: str, message: str) -> str | None:
    try:
        fail_job(session, job_id, from_status=JobStatus.running, attempt=attempt, code=code, message=message)
    except StaleTransition:
        return None
    return JobStatus.failed.value
