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
from workers.inference.execute import JobFailure, execute_job

log = logging.getLogger("vlmq.worker")
settings = get_worker_settings()
app = create_celery(settings, name="vlmq-inference")

_runtime = None
_load_error: str | None = None


@worker_process_init.connect
def load_model(**_kwargs) -> None:
    """A model that cannot load fails the jobs that need it, with the reason; it does not put the
    pool into a crash loop."""
    global _runtime, _load_error
    from workers.inference.runtime.model import InternVLRuntime  # torch only in worker processes

    log.info("loading %s from %s", settings.resolved_model_id, settings.resolved_model_path)
    try:
        _runtime = InternVLRuntime.load(settings.resolved_model_path, device=settings.device, dtype=settings.dtype)
    except Exception as error:  # any loader failure: bad directory, bad weights, out of memory
        log.exception("model %s could not be loaded", settings.resolved_model_id)
        _load_error = f"{type(error).__name__}: {error}"


def _run_batch(requests):
    if _runtime is None and _load_error is None:  # a solo pool has no fork: load on first use
        load_model()
    if _runtime is None:
        raise JobFailure("model_unavailable", f"the model could not be loaded: {_load_error}"[:500])
    return _runtime.run(requests)


def _run(job_id: str) -> str | None:
    return execute_job(job_id, settings=settings, store=open_store(settings.resolved_storage_url), run_batch=_run_batch)


# One Celery task per job task; every one carries only the job id.
for _task in JobTask:
    app.task(name=task_name_for(_task), ignore_result=True)(_run)
