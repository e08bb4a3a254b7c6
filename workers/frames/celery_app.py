"""The frames worker's Celery app: ``celery -A workers.frames.celery_app worker``.

CPU only (no torch): it consumes ``vlmq.frames``, decodes and samples each video job's frames, and
publishes the job to its model's queue, so GPU workers only ever read ready 448×448 tiles.
"""

from __future__ import annotations

import logging

from shared.config.settings import get_frames_settings
from shared.queue import FRAMES_QUEUE, PREPARE_FRAMES_TASK, create_celery, route_for
from shared.storage import open_store
from workers.frames.prepare import RetryLater, prepare_job

log = logging.getLogger("vlmq.frames")
settings = get_frames_settings()
app = create_celery(settings, name="vlmq-frames", queues=[FRAMES_QUEUE])


def _hand_on(job_id: str, task: str, model_id: str) -> None:
    task_name, queue = route_for(task, model_id, prepared=True)
    app.send_task(task_name, args=[job_id], queue=queue)


@app.task(name=PREPARE_FRAMES_TASK, bind=True, ignore_result=True, max_retries=None)
def prepare(self, job_id: str) -> str:
    last_try = self.request.retries + 1 >= settings.max_attempts
    try:
        return prepare_job(job_id, settings=settings, store=open_store(settings.resolved_storage_url),
                           hand_on=_hand_on, last_try=last_try)
    except RetryLater as reason:
        delay = min(settings.retry_backoff_s * 2 ** self.request.retries, 300.0)
        log.warning("job %s: %s; retrying in %.0f s", job_id, reason, delay)
        raise self.retry(countdown=delay) from None
