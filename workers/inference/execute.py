"""Run one job: claim it, load its media, prepare its request, hand it to its model's engine (where
it shares decode steps with every other running job), and record its outcome the moment its row
leaves the engine.

Idempotent: a job that is no longer queued (a duplicate delivery, a deleted job) is left alone, and
every status change is a compare-and-set through ``shared.jobs``. Jobs share only decode steps: one
that fails to load, is canceled, times out or breaks the model ends alone.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

import redis
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
from shared.jobs.deltas import DeltaWriter
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
from workers.inference.runtime.device_faults import DeviceLost
from workers.inference.runtime.requests import GenerationRequest, GenerationResult

log = logging.getLogger("vlmq.worker")


# Re-publish a job id after a delay: (job_id, task, model, delay_s).
RetryLater = Callable[[str, str, str, float], None]
# A model id → its loaded runtime (``JobFailure("model_unavailable")`` when it is not loaded).
RuntimeFor = Callable[[str], object]


class HandedBack(Exception):
    """The job was waiting for the engine when the worker began shutting down: it goes back."""


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
        system_message=job.system,
        max_new_tokens=options.get("max_new_tokens", 512),
        temperature=options.get("temperature", 0.0),
        top_p=options.get("top_p"),
    )


def _result_body(job: Job, result: GenerationResult, video: VideoFrames | None = None) -> dict:
    finished = utcnow()
    body = {
        "text": result.text,
        "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens, "tiles": result.tiles},
        # "stop" or "length" (max_new_tokens ran out): an extension of API.md's result.
        "finish_reason": result.finish_reason,
        "timings_ms": {
            "queue": round((job.started_at - job.created_at).total_seconds() * 1000, 1),
            "preprocess": round(result.preprocess_ms, 1),
            "inference": round(result.inference_ms, 1),
            "total": round((finished - job.created_at).total_seconds() * 1000, 1),
        },
        # Its admission into the engine: the jobs admitted in the same step (``id``, ``size``), and
        # the mean number of rows in the decode steps it took part in (an extension of API.md's result).
        "batch": {"id": result.batch_id, "size": result.batch_size, "mean_rows": result.mean_rows},
    }
    if result.boxes is not None:
        body["boxes"] = result.boxes
    if video is not None:
        body["frames"] = video.frames
        # Decoding ran on the frames worker, off this GPU worker's path: reported apart.
        body["timings_ms"]["decode"] = round(video.decode_ms, 1)
        body["timings_ms"]["preprocess"] = round(result.preprocess_ms + video.load_ms, 1)
    return body


@dataclass
class _Attempt:
    """One job's attempt inside a batch: its lease, its request once its media loaded, and what
    became of it (``done``: its final status was decided, or it had nothing left to do)."""

    job: Job
    attempt: int
    heartbeat: LeaseHeartbeat
    timeout_s: float
    request: GenerationRequest | None = None
    video: VideoFrames | None = None
    outcome: GenerationResult | Exception | None = None
    done: bool = False
    status: str | None = None
    stopped_to_hand_back: bool = False
    deltas: DeltaWriter | None = None

    @property
    def job_id(self) -> str:
        return self.job.id

    def end(self, status: str | None) -> None:
        self.done, self.status = True, status


@dataclass
class JobRun:
    settings: WorkerSettings
    store: ObjectStore
    runtime_for: RuntimeFor
    retry_later: RetryLater | None = None
    handing_back: Callable[[], bool] = lambda: False
    deltas: redis.Redis | None = None  # where ``stream: true`` jobs' text goes as it is generated

    def execute(self, job_id: str) -> str | None:
        """The job's final status, or None where this delivery had nothing to do (a duplicate, or an
        attempt that lost its lease to a cancel or a requeue)."""
        attempt = self._claim(job_id)
        if attempt is None:
            return None
        with attempt.heartbeat, about_job(job_id):
            self._prepare(attempt)
            if attempt.outcome is None and not attempt.done:
                attempt.outcome = self._generate(attempt)
            self._finish(attempt)
        record.batch_ran(attempt.job.model, [attempt.outcome] if isinstance(attempt.outcome, GenerationResult) else [])
        return attempt.status

    def _claim(self, job_id: str) -> _Attempt | None:
        with about_job(job_id), session_scope(self.settings.resolved_database_url) as session:
            job = session.get(Job, job_id)
            if job is None or job.status != JobStatus.queued.value:
                log.info("job %s is %s: nothing to do", job_id, job.status if job else "gone")
                return None
            timeout_s = self.settings.timeout_for(job.task)
            try:
                attempt = start_job(session, job_id, seen_attempts=job.attempts, lease_s=self.settings.lease_s)
            except StaleTransition:
                return None
            session.refresh(job)
            log.info("job %s attempt %d started", job_id, attempt)
        heartbeat = LeaseHeartbeat(self.settings.resolved_database_url, job_id, attempt, lease_s=self.settings.lease_s,
                                   interval_s=self.settings.heartbeat_s, deadline_s=timeout_s)
        return _Attempt(job, attempt, heartbeat, timeout_s)

    def _stop_signal(self, attempt: _Attempt) -> Callable[[], bool]:
        def stop_when() -> bool:
            if attempt.heartbeat.should_stop():
                return True
            if self.retry_later is not None and self.handing_back():
                attempt.stopped_to_hand_back = True
                return True
            return False

        return stop_when

    def _prepare(self, attempt: _Attempt) -> None:
        """The job's request, or its outcome if it cannot get that far."""
        job = attempt.job
        with about_job(job.id), session_scope(self.settings.resolved_database_url) as session:
            try:
                if JobTask(job.task) not in RUNNABLE_TASKS:
                    raise JobFailure("unsupported_task", f"this deployment cannot run {job.task} jobs yet")
                items = fetch_pending_urls(session, job, attempt.attempt, store=self.store, settings=self.settings,
                                           should_stop=self._stop_signal(attempt))
                if JobTask(job.task).is_video:
                    attempt.video = load_video_frames(job, items, store=self.store, settings=self.settings)
                    attempt.request = _request_for(job, [], frames=attempt.video.tiles)
                else:
                    attempt.request = _request_for(
                        job, load_images(self.store, items, max_pixels=self.settings.max_image_pixels))
                if job.stream and self.deltas is not None:
                    attempt.deltas = DeltaWriter(self.deltas, job.id, attempt.attempt)
                    attempt.request.text_sink = attempt.deltas.offer
            except StaleTransition:  # the attempt lost the job while recording fetched media
                session.rollback()
                attempt.end(None)
            except Exception as error:  # decided in _finish, with the other outcomes
                attempt.outcome = error

    def _generate(self, attempt: _Attempt) -> GenerationResult | Exception:
        """The job's row through its model's engine: prepared here (tiling, tokens; this thread, not
        the engine's), then decoded beside every other running job."""
        try:
            runtime = self.runtime_for(attempt.job.model)
            prepared = runtime.prepare(attempt.request)
            job = attempt.job

            def admitted() -> None:  # on the engine's thread: the job's id goes in explicitly
                log.info("job %s attempt %d decoding", job.id, attempt.attempt, extra={"job_id": job.id})

            return runtime.engine.submit(prepared, self._stop_signal(attempt), admitted).result()
        except HandedBack:
            attempt.stopped_to_hand_back = True
            return JobFailure("handed_back", "the worker is shutting down")
        except DeviceLost as error:  # this process exits; another attempt runs it (bounded)
            return TransientFailure("device_lost", f"the GPU failed while running the job: {error}"[:400])
        except Exception as error:  # decided in _finish, as every other outcome
            return error

    def _finish(self, attempt: _Attempt) -> None:
        if attempt.done:
            return
        outcome, job, heartbeat = attempt.outcome, attempt.job, attempt.heartbeat
        with session_scope(self.settings.resolved_database_url) as session:
            if attempt.stopped_to_hand_back and not heartbeat.lost.is_set():  # a cut-short result is worthless
                status = self._requeue(session, job, attempt.attempt, delay_s=0.0)  # at once, for another worker
                if status:
                    log.info("job %s attempt %d handed back: the worker is shutting down", job.id, attempt.attempt)
                return attempt.end(status)
            if heartbeat.lost.is_set():  # canceled or requeued while running: this attempt writes nothing
                done = f"after {outcome.output_tokens} tokens" if isinstance(outcome, GenerationResult) else "early"
                log.info("job %s attempt %d stopped %s: lease lost", job.id, attempt.attempt, done)
                return attempt.end(None)
            if heartbeat.timed_out():
                outcome = JobFailure("timeout", f"the job ran longer than {attempt.timeout_s:g} s")
            if isinstance(outcome, GenerationResult):
                return attempt.end(self._succeed(session, attempt, outcome))
            return attempt.end(self._fail_with(session, attempt, outcome))

    def _succeed(self, session, attempt: _Attempt, result: GenerationResult) -> str | None:
        job = attempt.job
        body = _result_body(job, result, attempt.video)
        if attempt.deltas is not None:  # the rest of the text, before the job is seen to end
            attempt.deltas.offer(result.text, final=True)
        try:
            finish_job(session, job.id, attempt=attempt.attempt, result=body)
        except StaleTransition:
            log.info("job %s attempt %d finished after losing its lease: result rejected", job.id, attempt.attempt)
            return None
        session.commit()
        record.job_stages(job.task, job.model, body["timings_ms"])
        discard_prepared_frames(self.store, job)
        return JobStatus.succeeded.value

    def _fail_with(self, session, attempt: _Attempt, error: Exception | None) -> str | None:
        job, number = attempt.job, attempt.attempt
        if isinstance(error, AttemptStopped):  # stopped while fetching: only a lost lease or time stops it
            return None
        if isinstance(error, TransientFailure):
            if self.retry_later is None or number >= self.settings.max_attempts:
                return _fail(session, job.id, number, error.code, f"{error.message} (after {number} attempts)")
            delay = min(self.settings.retry_backoff_s * 2 ** (number - 1), 300.0)  # exponential backoff
            status = self._requeue(session, job, number, delay_s=delay)
            if status:
                log.warning("job %s attempt %d: %s; retrying in %.0f s", job.id, number, error.message, delay)
            return status
        if isinstance(error, JobFailure):
            return _fail(session, job.id, number, error.code, error.message)
        if isinstance(error, torch_out_of_memory()):
            return _fail(session, job.id, number, "out_of_memory",
                         f"the job does not fit in GPU memory even with 1 tile: {error}"[:500])
        # the model or a library broke on this job: fail it, keep the worker and the batch-mates
        log.error("job %s failed", job.id, exc_info=error)
        return _fail(session, job.id, number, "model_error", f"{type(error).__name__}: {error}"[:500])

    def _requeue(self, session, job: Job, attempt: int, *, delay_s: float) -> str | None:
        """Back to queued and published again after ``delay_s`` (a transient failure's retry, or a
        job handed back by a worker shutting down); None if the attempt had lost the job."""
        try:
            requeue_job(session, job.id, attempt=attempt)
        except StaleTransition:
            return None
        session.commit()  # queued before the message exists, so its delivery finds the job runnable
        self.retry_later(job.id, job.task, job.model, delay_s)
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
