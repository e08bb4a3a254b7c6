"""The inference worker's Celery app: ``celery -A workers.inference.celery_app worker -Q vlmq.inference``.

The model is loaded once per worker process, after the fork (``worker_process_init``), and kept.
"""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from shared.config.settings import get_worker_settings
from shared.jobs.states import JobTask
from shared.queue import create_celery, task_name_for
from shared.storage import open_store
from workers.inference.execute import execute_job

log = logging.getLogger("vlmq.worker")
settings = get_worker_settings()
app = create_celery(settings, name="vlmq-inference")

_runtime = None


@worker_process_init.connect
def load_model(**_kwargs) -> None:
    global _runtime
    from workers.inference.runtime.model import InternVLRuntime  # torch only in worker processes

    log.info("loading %s from %s", settings.resolved_model_id, settings.resolved_model_path)
    _runtime = InternVLRuntime.load(settings.resolved_model_path, device=settings.device, dtype=settings.dtype)


def _run_batch(requests):
    if _runtime is None:  # a solo pool has no fork: load on first use
        load_model()
    return _runtime.run(requests)


def _run(job_id: str) -> str | None:
    return execute_job(job_id, settings=settings, store=open_store(settings.resolved_storage_url), run_batch=_run_batch)


# One Celery task per job task; every one carries only the job id.
for _task in JobTask:
    app.task(name=task_name_for(_task), ignore_result=True)(_run)
