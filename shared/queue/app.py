"""The Celery application every process builds the same way."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from celery import Celery
from kombu import Queue

from shared.config.settings import CommonSettings
from shared.queue.names import queue_for

LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"


def _reachable(url: str, timeout_s: float = 0.3) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_broker_url(settings: CommonSettings) -> str:
    """The configured broker; embedded default: local Redis if it answers, else a file broker.

    The file broker needs no server but is not crash-safe: a message a worker had taken when it
    died is gone (the job row stays, and is visible as stuck in ``running``).
    """
    if settings.broker_url:
        return settings.broker_url
    if _reachable(LOCAL_REDIS_URL):
        return LOCAL_REDIS_URL
    return "filesystem://"


def redis_url_of(broker_url: str) -> str | None:
    """The broker's URL if the broker is Redis: what else vlmq keeps there (queue depths, tenant
    rates, streamed text) goes without it on another broker."""
    return broker_url if broker_url.startswith(("redis://", "rediss://")) else None


def create_celery(
    settings: CommonSettings, *, name: str = "vlmq", models: list[str] | None = None, queues: list[str] | None = None
) -> Celery:
    """The queues a worker consumes: ``queues`` as given, else those of ``models`` (default: every
    registered model)."""
    broker_url = resolve_broker_url(settings)
    app = Celery(name, broker=broker_url)
    queues = queues or [queue_for(model_id) for model_id in (models or settings.model_sources)]
    app.conf.update(
        task_default_queue=queues[0],
        task_queues=[Queue(queue) for queue in queues],
        task_serializer="json",
        accept_content=["json"],
        # The database holds results; Celery's result backend is not used.
        task_ignore_result=True,
        # A task is acknowledged only after it ran, and re-delivered if its worker died mid-run.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # One Redis list per queue: kombu would spread prioritised messages over extra lists
        # ("<queue>\x06\x163", …); with one priority step every message lands in the list named
        # like the queue, the one list KEDA's Redis trigger counts (helm/vlmq ScaledObjects).
        broker_transport_options={"visibility_timeout": 6 * 3600, "priority_steps": [0]},
    )
    if broker_url.startswith("filesystem://"):
        folder = settings.data_dir.resolve() / "broker"
        (folder / "out").mkdir(parents=True, exist_ok=True)
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        (folder / "control").mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport_options = {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),  # default is ./control in the working directory
            "store_processed": False,
        }
    return app
