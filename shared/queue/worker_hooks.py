"""What every Celery worker (inference, frames, notifier) does beside its tasks: vlmq's logging
instead of Celery's, ``/metrics`` and ``/healthz`` on ``VLMQ_METRICS_PORT`` from its main process,
and the samples of exited pool processes kept while their live gauges are dropped."""

from __future__ import annotations

import logging

from celery.signals import setup_logging, worker_process_shutdown, worker_ready

from shared.config.settings import CommonSettings
from shared.logs import configure_logging
from shared.metrics.exposition import metrics_registry, serve_worker_endpoints
from shared.metrics.multiprocess import forget_process, start_process_tree

log = logging.getLogger("vlmq.worker")


def install_worker_hooks(settings: CommonSettings, *, role: str) -> None:
    """Connected once, when the worker's app module is imported (in the main process, before the
    pool forks), with strong references: the receivers are closures."""
    start_process_tree()  # this worker's samples, shared with its pool processes only

    def use_vlmq_logging(**_kwargs) -> None:  # connected: Celery leaves logging to us
        configure_logging(settings, role=role)

    def serve_metrics(**_kwargs) -> None:
        if settings.metrics_port is None:
            return
        try:
            serve_worker_endpoints(settings.metrics_port, metrics_registry(), healthy=lambda: True)
        except OSError as error:  # a taken port costs the metrics, not the worker
            log.error("metrics not served on port %d: %s", settings.metrics_port, error)
        else:
            log.info("metrics and health on port %d", settings.metrics_port)

    def forget_pool_process(pid: int | None = None, **_kwargs) -> None:
        forget_process(pid)

    setup_logging.connect(use_vlmq_logging, weak=False)
    worker_ready.connect(serve_metrics, weak=False)
    worker_process_shutdown.connect(forget_pool_process, weak=False)
