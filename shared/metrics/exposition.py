"""Serving the samples: ``/metrics`` of the API, and a small HTTP server in each Celery worker.

Every process tree has its own directory of samples (``multiprocess``), so each pod is scraped on
its own; ``vlmq_queue_depth`` is read from the broker when the API is scraped, and only there, so
summing over pods never counts a queue twice.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from shared.metrics import series
from shared.queue.app import redis_url_of

log = logging.getLogger("vlmq.metrics")


class QueueDepthCollector(Collector):
    """Messages waiting in each queue: the length of the Redis list the queue is stored in, the
    same number a KEDA Redis trigger reads (Celery keeps one list per queue, ``priority_steps``)."""

    def __init__(self, broker_url: str, queues: Iterable[str]):
        self.queues = list(queues)
        url = redis_url_of(broker_url)
        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0) if url else None

    def collect(self):
        family = GaugeMetricFamily(series.QUEUE_DEPTH, "Jobs waiting in the broker, per queue.", labels=["queue"])
        if self.client is not None:
            try:
                with self.client.pipeline(transaction=False) as pipeline:
                    for queue in self.queues:
                        pipeline.llen(queue)
                    depths = pipeline.execute()
            except redis.RedisError as error:  # a scrape without the depth beats a failed scrape
                log.warning("queue depth unavailable: %s", error)
            else:
                for queue, depth in zip(self.queues, depths, strict=True):
                    family.add_metric([queue], depth)
        yield family


def metrics_registry(*, broker_url: str | None = None, queues: Iterable[str] = ()) -> CollectorRegistry:
    """Every process's samples from the shared directory, plus the queue depths when asked for."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    if broker_url and queues:
        registry.register(QueueDepthCollector(broker_url, queues))
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *_args) -> None:  # scrapes every few seconds would drown the worker's log
        pass


def serve_worker_endpoints(port: int, registry: CollectorRegistry, healthy: Callable[[], bool],
                           host: str = "0.0.0.0") -> ThreadingWSGIServer:
    """``/metrics`` and ``/healthz`` of a Celery worker, on a daemon thread of its main process."""

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/healthz":
            ok = healthy()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps({"status": "ok" if ok else "unhealthy"}).encode()]
        if environ.get("PATH_INFO") == "/metrics":
            body, content_type = render(registry)
            start_response("200 OK", [("Content-Type", content_type)])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
