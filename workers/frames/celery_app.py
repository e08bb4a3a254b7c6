"""The frames worker's Celery app: ``celery -A workers.frames.celery_app worker``.

CPU only (no torch): it consumes ``vlmq.frames``, decodes and samples each video job's frames, and
publishes the job to its model's queue, so GPU workers only ever read ready 448×448 tiles. It also
owns the CPU side of OpenAI-compatible batches (``workers.frames.batches``): expanding input files
into jobs, and settling batches, with a sweeper thread in its main process.
"""

from __future__ import annotations

import logging

from celery.signals import worker_ready

from shared.config.settings import get_frames_settings
from shared.queue import (
    CAPTION_SEGMENTS_TASK,
    EXPAND_BATCH_TASK,
    FRAMES_QUEUE,
    INDEX_VIDEO_TASK,
    PREPARE_FRAMES_TASK,
    SETTLE_BATCH_TASK,
    create_celery,
    queue_for,
    route_for,
)
from shared.queue.worker_hooks import install_worker_hooks
from shared.storage import open_store
from workers.frames.batches import BatchSweeper, expand_batch, settle_batch
from workers.frames.indexing import RetryVideoLater, index_video
from workers.frames.prepare import RetryLater, prepare_job

log = logging.getLogger("vlmq.frames")
settings = get_frames_settings()
app = create_celery(settings, name="vlmq-frames", queues=[FRAMES_QUEUE])
install_worker_hooks(settings, role="frames")


def _hand_on(job_id: str, task: str, model_id: str) -> None:
    task_name, queue = route_for(task, model_id, prepared=True)
    app.send_task(task_name, args=[job_id], queue=queue)


def _run_with_backoff(task, item_id: str, run) -> str:
    """``run(last_try)``; a transient failure (storage) is retried with exponential backoff, and on
    the last try the work fails with its reason instead."""
    last_try = task.request.retries + 1 >= settings.max_attempts
    try:
        return run(last_try)
    except (RetryLater, RetryVideoLater) as reason:
        delay = min(settings.retry_backoff_s * 2 ** task.request.retries, 300.0)
        log.warning("%s: %s; retrying in %.0f s", item_id, reason, delay)
        raise task.retry(countdown=delay) from None


@app.task(name=PREPARE_FRAMES_TASK, bind=True, ignore_result=True, max_retries=None)
def prepare(self, job_id: str) -> str:
    return _run_with_backoff(self, job_id, lambda last_try: prepare_job(
        job_id, settings=settings, store=open_store(settings.resolved_storage_url), hand_on=_hand_on,
        last_try=last_try))


def _publish_batch(video_id: str, batch: int, model_id: str) -> None:
    app.send_task(CAPTION_SEGMENTS_TASK, args=[video_id, batch], queue=queue_for(model_id))


@app.task(name=INDEX_VIDEO_TASK, bind=True, ignore_result=True, max_retries=None)
def cut_index_video(self, video_id: str) -> str:
    return _run_with_backoff(self, video_id, lambda last_try: index_video(
        video_id, settings=settings, store=open_store(settings.resolved_storage_url), publish_batch=_publish_batch,
        last_try=last_try))


def _publish_jobs(rows: list[dict]) -> None:
    """A batch's new jobs, to their models' queues (a lost message: the inference reaper re-publishes)."""
    with app.producer_or_acquire() as producer:
        for row in rows:
            task_name, queue = route_for(row["task"], row["model"], prepared=False)
            app.send_task(task_name, args=[row["id"]], queue=queue, producer=producer)


def _publish_expansion(batch_id: str) -> None:
    app.send_task(EXPAND_BATCH_TASK, args=[batch_id], queue=FRAMES_QUEUE)


@app.task(name=EXPAND_BATCH_TASK, ignore_result=True)
def expand(batch_id: str) -> str:
    return expand_batch(batch_id, settings=settings, store=open_store(settings.resolved_storage_url),
                        publish=_publish_jobs)


@app.task(name=SETTLE_BATCH_TASK, ignore_result=True)
def settle(batch_id: str) -> str:
    return settle_batch(batch_id, settings=settings, store=open_store(settings.resolved_storage_url))


@worker_ready.connect
def start_batch_sweeper(**_kwargs) -> None:
    BatchSweeper(settings, open_store(settings.resolved_storage_url), _publish_expansion).start()
