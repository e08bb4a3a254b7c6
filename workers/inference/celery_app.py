"""The inference worker's Celery app: ``celery -A workers.inference.celery_app worker``.

The worker serves the models in ``VLMQ_SERVE_MODELS`` (default: every registered model) and
consumes exactly their queues, so jobs reach only a worker that has their model loaded. Models are
loaded once per worker process, after the fork (``worker_process_init``), and kept.
"""

from __future__ import annotations

import logging
import time

from celery.signals import worker_process_init, worker_ready

from shared.config.settings import get_worker_settings
from shared.jobs.states import JobTask
from shared.metrics import record
from shared.queue import CAPTION_SEGMENTS_TASK, create_celery, queue_for, task_name_for
from shared.queue.worker_hooks import install_worker_hooks
from shared.storage import StorageError, open_store
from workers.inference.drain import drain_on_shutdown, handing_back
from workers.inference.execute import execute_job
from workers.inference.failures import JobFailure
from workers.inference.indexing import caption_segments

log = logging.getLogger("vlmq.worker")
settings = get_worker_settings()
app = create_celery(settings, name="vlmq-inference", models=settings.served_models)
install_worker_hooks(settings, role="inference")
drain_on_shutdown(settings.shutdown_drain_s)

_runtimes: dict = {}
_load_errors: dict[str, str] = {}


@worker_process_init.connect
def load_models(**_kwargs) -> None:
    """A model that cannot load fails the jobs that need it, with the reason; it does not put the
    pool into a crash loop."""
    from workers.inference.runtime.loading import LoadOptions
    from workers.inference.runtime.model import (
        InternVLRuntime,  # torch only in worker processes
    )
    from workers.inference.runtime.sources import resolve_source

    options = LoadOptions(device=settings.device, dtype=settings.dtype, load_in_8bit=settings.load_in_8bit)
    for model_id in settings.served_models:
        source = settings.model_sources[model_id]
        log.info("loading %s from %s", model_id, source)
        try:
            started = time.perf_counter()
            path = resolve_source(source, cache_dir=settings.resolved_hub_cache_dir, download=settings.hub_download)
            _runtimes[model_id] = InternVLRuntime.load(path, options)
            log.info("loaded %s in %.1fs", model_id, time.perf_counter() - started)
        except Exception as error:  # any loader failure: bad directory, bad weights, out of memory
            log.exception("model %s could not be loaded", model_id)
            _load_errors[model_id] = f"{type(error).__name__}: {error}"


@worker_ready.connect
def start_reaper(**_kwargs) -> None:
    """In the worker's main process: requeue jobs of dead workers, re-publish lost messages."""
    from workers.inference.reaper import Reaper

    Reaper(app, settings).start()


def _run_batch(model_id: str, requests, should_stop):
    if not _runtimes and not _load_errors:  # a solo pool has no fork: load on first use
        load_models()
    if model_id not in _runtimes:
        reason = _load_errors.get(model_id, "this worker does not serve it")
        raise JobFailure("model_unavailable", f"model {model_id!r} could not be loaded: {reason}"[:500])
    results = _runtimes[model_id].run(requests, should_stop)
    record.batch_ran(model_id, results)
    return results


def _retry_later(job_id: str, task: str, model_id: str, delay_s: float) -> None:
    app.send_task(task_name_for(task), args=[job_id], queue=queue_for(model_id), countdown=delay_s)


def _run(job_id: str) -> str | None:
    return execute_job(
        job_id, settings=settings, store=open_store(settings.resolved_storage_url), run_batch=_run_batch,
        retry_later=_retry_later, handing_back=handing_back,
    )


# One Celery task per job task; every one carries only the job id.
for _task in JobTask:
    app.task(name=task_name_for(_task), ignore_result=True)(_run)


@app.task(name=CAPTION_SEGMENTS_TASK, ignore_result=True, autoretry_for=(StorageError,), retry_backoff=2,
          max_retries=5)
def caption_index_segments(video_id: str, batch: int) -> str:
    """One batch of a video index's segments (the frames worker cut them); storage hiccups retry."""
    return caption_segments(video_id, batch, settings=settings, store=open_store(settings.resolved_storage_url),
                            run_batch=_run_batch)
