"""The inference worker's Celery app: ``celery -A workers.inference.celery_app worker``.

The worker serves the models in ``VLMQ_SERVE_MODELS`` (default: every registered model) and
consumes exactly their queues, so jobs reach only a worker that has their model loaded. Models are
loaded once per worker process, after the fork (``worker_process_init``), and kept.
"""

from __future__ import annotations

import functools
import logging
import time

import redis
from celery.signals import worker_process_init, worker_ready
from celery_batches import Batches

from shared.config.settings import get_worker_settings
from shared.metrics import record
from shared.queue import (
    CAPTION_SEGMENTS_TASK,
    create_celery,
    queue_for,
    redis_url_of,
    resolve_broker_url,
    task_name_for,
)
from shared.queue.names import RUN_JOB_TASK
from shared.queue.worker_hooks import install_worker_hooks
from shared.storage import StorageError, open_store
from workers.inference.drain import drain_on_shutdown, handing_back
from workers.inference.execute import BatchRun
from workers.inference.failures import JobFailure
from workers.inference.indexing import caption_segments

log = logging.getLogger("vlmq.worker")
settings = get_worker_settings()
app = create_celery(settings, name="vlmq-inference", models=settings.served_models)
install_worker_hooks(settings, role="inference")
# One batch's messages at a time per pool process: the next batch forms from what is still queued
# when this one is acknowledged, and a worker shutting down holds no more than it runs.
app.conf.worker_prefetch_multiplier = settings.batch_max_jobs
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
            _runtimes[model_id].prepare_threads = settings.preprocess_threads
            log.info("loaded %s in %.1fs", model_id, time.perf_counter() - started)
        except Exception as error:  # any loader failure: bad directory, bad weights, out of memory
            log.exception("model %s could not be loaded", model_id)
            _load_errors[model_id] = f"{type(error).__name__}: {error}"


@worker_ready.connect
def start_reaper(**_kwargs) -> None:
    """In the worker's main process: requeue jobs of dead workers, re-publish lost messages."""
    from workers.inference.reaper import Reaper

    Reaper(app, settings).start()


def _runtime_for(model_id: str):
    if not _runtimes and not _load_errors:  # a solo pool has no fork: load on first use
        load_models()
    if model_id not in _runtimes:
        reason = _load_errors.get(model_id, "this worker does not serve it")
        raise JobFailure("model_unavailable", f"model {model_id!r} could not be loaded: {reason}"[:500])
    return _runtimes[model_id]


def _run_batch(model_id: str, requests, should_stop):
    """An index's segments: all succeed or the first failure raises."""
    results = _runtime_for(model_id).run(requests, should_stop)
    record.batch_ran(model_id, results)
    return results


def _run_isolated(model_id: str, requests, stops):
    """Jobs: one outcome (a result or the exception) per request."""
    outcomes = _runtime_for(model_id).run_isolated(requests, stops)
    record.batch_ran(model_id, [outcome for outcome in outcomes if not isinstance(outcome, Exception)])
    return outcomes


def _retry_later(job_id: str, task: str, model_id: str, delay_s: float) -> None:
    app.send_task(task_name_for(task), args=[job_id], queue=queue_for(model_id), countdown=delay_s)


@app.task(name=RUN_JOB_TASK, base=Batches, flush_every=settings.batch_max_jobs,
          flush_interval=settings.batch_wait_ms / 1000, ignore_result=True)
def run_jobs(requests) -> dict[str, str | None]:
    """The jobs whose ids arrived within ``VLMQ_BATCH_WAIT_MS`` of each other (at most
    ``VLMQ_BATCH_MAX_JOBS``; a backlog fills a batch at once), run as batches through the model.

    celery-batches collects the messages in the worker's main process and hands the list to one
    pool process, acknowledging every message only after the batch ran (acks late), so a worker
    that dies mid-batch loses none of them."""
    job_ids = list(dict.fromkeys(request.args[0] for request in requests))  # a redelivered duplicate runs once
    run = BatchRun(settings, open_store(settings.resolved_storage_url), _run_isolated, _retry_later, handing_back,
                   deltas=_deltas_client())
    return run.execute(job_ids)


@functools.cache
def _deltas_client() -> redis.Redis | None:
    """The broker's Redis, for streamed text (one client per pool process, made after the fork)."""
    url = redis_url_of(resolve_broker_url(settings))
    return redis.Redis.from_url(url, socket_timeout=2.0) if url else None


@app.task(name=CAPTION_SEGMENTS_TASK, ignore_result=True, autoretry_for=(StorageError,), retry_backoff=2,
          max_retries=5)
def caption_index_segments(video_id: str, batch: int) -> str:
    """One batch of a video index's segments (the frames worker cut them); storage hiccups retry."""
    return caption_segments(video_id, batch, settings=settings, store=open_store(settings.resolved_storage_url),
                            run_batch=_run_batch)
