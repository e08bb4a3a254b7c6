"""A running attempt's lease: a heartbeat thread renews it, and tells the job to stop when it is lost.

The lease is lost when the job was canceled or, after this worker stalled past the lease, requeued
for another attempt. Either way this attempt must stop at its next safe point (between decode steps)
and write nothing; the state machine would reject its result anyway.
"""

from __future__ import annotations

import logging
import threading
import time

from shared.db.engine import session_scope
from shared.jobs import renew_lease

log = logging.getLogger("vlmq.worker")


class LeaseHeartbeat:
    def __init__(self, database_url: str, job_id: str, attempt: int, *, lease_s: float, interval_s: float,
                 deadline_s: float | None = None):
        self.database_url, self.job_id, self.attempt = database_url, job_id, attempt
        self.lease_s, self.interval_s = lease_s, interval_s
        self.deadline = time.monotonic() + deadline_s if deadline_s else None
        self.lost = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job_id}", daemon=True)

    def timed_out(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def should_stop(self) -> bool:
        """Polled by generation between decode steps."""
        return self.lost.is_set() or self.timed_out()

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                with session_scope(self.database_url) as session:
                    if not renew_lease(session, self.job_id, attempt=self.attempt, lease_s=self.lease_s):
                        log.info("job %s attempt %d lost its lease (canceled or requeued)", self.job_id, self.attempt,
                                 extra={"job_id": self.job_id})
                        self.lost.set()
                        return
            except Exception:  # a database hiccup: try again next beat; the lease has slack for it
                log.warning("lease renewal of job %s failed", self.job_id, exc_info=True, extra={"job_id": self.job_id})

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stopped.set()
        self._thread.join(timeout=self.interval_s + 5)
