"""Graceful shutdown: on SIGTERM a worker takes no new job, lets running ones finish for
``VLMQ_SHUTDOWN_DRAIN_S``, then hands back those still running.

Celery's warm shutdown (what SIGTERM starts) already stops consuming, returns the messages it had
reserved and waits for running tasks. What it cannot do is bound that wait: the pod's grace period
would end in SIGKILL and the job would wait out its lease. So the main process stamps a deadline in
memory its forked pool processes share; past it, a running attempt stops at its next decode step,
puts its job back to ``queued`` and publishes it again, and another worker runs it from the start.
"""

from __future__ import annotations

import logging
import time
from multiprocessing.sharedctypes import RawValue

from celery.signals import worker_shutting_down

log = logging.getLogger("vlmq.worker")

# Created at import, in the main process before the pool forks: one page every process sees.
_deadline = RawValue("d", 0.0)


def start_draining(drain_s: float) -> None:
    _deadline.value = time.time() + drain_s


def draining() -> bool:
    """True from the moment the worker began shutting down."""
    return _deadline.value > 0.0


def handing_back() -> bool:
    """True once the worker is shutting down and its running jobs had their time."""
    return 0.0 < _deadline.value <= time.time()


def drain_on_shutdown(drain_s: float) -> None:
    def on_shutdown(**_kwargs) -> None:
        log.info("shutting down: running jobs have %.0f s to finish, then go back to the queue", drain_s)
        start_draining(drain_s)

    worker_shutting_down.connect(on_shutdown, weak=False)
