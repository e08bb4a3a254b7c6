"""The inference worker's Celery app: ``celery -A workers.inference.celery_app worker``.

The worker serves the models in ``VLMQ_SERVE_MODELS`` (default: every registered model) and
consumes exactly their queues, so jobs reach only a worker that has their model loaded. Models are
loaded once per worker process and kept, each with a continuous-batching engine; one engine loop
thread steps them all in turn.

A thread pool: each task thread carries one job from its claim to its recorded result (so the
broker's message is acknowledged only then, as before), preparing its media and request on its
own thread while the engine decodes the others. Before claiming, a thread waits while the engines'
backlog of claimed, not yet admitted jobs is a whole engine's worth (``VLMQ_BATCH_MAX_JOBS`` rows
or ``VLMQ_ENGINE_KV_TOKENS`` tokens): the rest stay in the broker, where other workers and KEDA
see them.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time

import redis
from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutting_down

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
from workers.inference.drain import drain_on_shutdown, draining, handing_back
from workers.inference.execute import HandedBack, JobRun
from workers.inference.failures import JobFailure
from workers.inference.indexing import caption_segments

log = logging.getLogger("vlmq.worker")
settings = get_worker_settings()
app = create_celery(settings, name="vlmq-inference", models=settings.served_models)
install_worker_hooks(settings, role="inference")
# Threads: running rows, the backlog waiting for the engines, and one more per model to wait on it.
app.conf.worker_pool = "threads"
app.conf.worker_concurrency = 2 * settings.batch_max_jobs * len(settings.served_models) + len(settings.served_models)
app.conf.worker_prefetch_multiplier = 1
drain_on_shutdown(settings.shutdown_drain_s)

_runtimes: dict = {}
_load_errors: dict[str, str] = {}
_loading = threading.Lock()
DEVICE_LOST_GRACE_S = 10.0  # the rows' threads record their retries before the process exits


def load_models(**_kwargs) -> None:
    """A model that cannot load fails the jobs that need it, with the reason; it does not put the
    worker into a crash loop."""
    from workers.inference.runtime.engine import EngineOptions, process_loop
    from workers.inference.runtime.loading import LoadOptions
    from workers.inference.runtime.model import (
        InternVLRuntime,  # torch only in worker processes
    )
    from workers.inference.runtime.sources import resolve_source

    process_loop().on_device_lost = _exit_on_device_lost
    options = LoadOptions(device=settings.device, dtype=settings.dtype, load_in_8bit=settings.load_in_8bit)
    engine = EngineOptions(max_rows=settings.batch_max_jobs, kv_tokens=settings.engine_kv_tokens,
                           prefill_tokens=settings.engine_prefill_tokens, prefill_tiles=settings.batch_max_tiles)
    for model_id in settings.served_models:
        source = settings.model_sources[model_id]
        log.info("loading %s from %s", model_id, source)
        try:
            started = time.perf_counter()
            path = resolve_source(source, cache_dir=settings.resolved_hub_cache_dir, download=settings.hub_download)
            runtime = InternVLRuntime.load(path, options)
            runtime.prepare_threads, runtime.engine_options, runtime.model_id = settings.preprocess_threads, engine, model_id
            _runtimes[model_id] = runtime
            log.info("loaded %s in %.1fs", model_id, time.perf_counter() - started)
        except Exception as error:  # any loader failure: bad directory, bad weights, out of memory
            log.exception("model %s could not be loaded", model_id)
            _load_errors[model_id] = f"{type(error).__name__}: {error}"


@worker_ready.connect
def start_reaper(**_kwargs) -> None:
    """Requeue jobs of dead workers, re-publish lost messages (a thread; it needs no model)."""
    from workers.inference.reaper import Reaper

    Reaper(app, settings).start()


@worker_shutting_down.connect(weak=False)
def hand_back_waiting(**_kwargs) -> None:
    """On SIGTERM, jobs claimed but not yet decoding go back to the queue at once; running ones
    have the drain time (``drain.py``)."""
    for runtime in list(_runtimes.values()):
        runtime.engine.hand_back_waiting(HandedBack())


def _exit_on_device_lost(error: BaseException) -> None:
    """A dead CUDA context fails every later kernel: the rows' jobs are recorded for a retry, then
    the process exits (its supervisor, Compose or Kubernetes, starts a fresh one)."""
    from workers.inference.runtime.device_faults import DEVICE_LOST_EXIT_CODE

    time.sleep(DEVICE_LOST_GRACE_S)
    log.critical("exiting after a lost GPU context: %s", error)
    logging.shutdown()
    os._exit(DEVICE_LOST_EXIT_CODE)


def _ensure_loaded() -> None:
    with _loading:
        if not _runtimes and not _load_errors:  # loaded on the first job, once per process
            load_models()


def _runtime_for(model_id: str):
    _ensure_loaded()
    if model_id not in _runtimes:
        reason = _load_errors.get(model_id, "this worker does not serve it")
        raise JobFailure("model_unavailable", f"model {model_id!r} could not be loaded: {reason}"[:500])
    return _runtimes[model_id]


def _run_batch(model_id: str, requests, should_stop):
    """An index's segments, through the same engine: all succeed or the first failure raises."""
    results = _runtime_for(model_id).run(requests, should_stop)
    record.batch_ran(model_id, results)
    return results


def _retry_later(job_id: str, task: str, model_id: str, delay_s: float) -> None:
    app.send_task(task_name_for(task), args=[job_id], queue=queue_for(model_id), countdown=delay_s)


def _wait_for_engine_room() -> None:
    """Blocks while the engines already hold a whole engine's worth of claimed, waiting jobs; a
    worker shutting down meanwhile puts the message back unclaimed."""
    from workers.inference.runtime.engine import process_loop

    def fits(rows: int, tokens: int) -> bool:
        return rows < settings.batch_max_jobs and tokens < settings.engine_kv_tokens

    loop = process_loop()
    while True:
        if draining():
            raise Reject("the worker is shutting down", requeue=True)
        if loop.wait_for_room(fits, timeout_s=0.2):  # woken by admissions; the timeout re-checks draining
            return


@app.task(name=RUN_JOB_TASK, ignore_result=True, acks_late=True)
def run_jobs(job_id: str) -> str | None:
    """One job, from its claim to its recorded outcome; it decodes beside every other running job."""
    _ensure_loaded()
    _wait_for_engine_room()
    run = JobRun(settings, open_store(settings.resolved_storage_url), _runtime_for, _retry_later, handing_back,
                 deltas=_deltas_client())
    return run.execute(job_id)


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
