"""The outbox relay: publishes the ids of deliveries that are due to the notifier's queue.

Publishing moves a delivery's next attempt ``DISPATCH_LEASE_S`` into the future (compare-and-set),
so each due delivery is published once; if its message is lost, it is due again after the lease.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery import Celery
from sqlalchemy import select, update

from shared.config.settings import NotifierSettings
from shared.db.engine import session_scope
from shared.db.models import Delivery, utcnow
from shared.queue import NOTIFY_QUEUE, DELIVER_TASK

log = logging.getLogger("vlmq.notifier")
DISPATCH_LEASE_S = 60.0


class OutboxRelay:
    def __init__(self, app: Celery, settings: NotifierSettings):
        self.app, self.settings = app, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vlmq-outbox-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.notifier_poll_s):
            try:
                self.run_once()
            except Exception:
                log.warning("outbox relay pass failed", exc_info=True)

    def run_once(self) -> int:
        now = utcnow()
        with session_scope(self.settings.resolved_database_url) as session:
            due = session.execute(
                select(Delivery.id, Delivery.next_attempt_at)
                .where(Delivery.status == "pending", Delivery.next_attempt_at <= now)
                .order_by(Delivery.next_attempt_at)
                .limit(200)
            ).all()
            dispatched = []
            for delivery_id, next_attempt_at in due:
                moved = session.execute(
                    update(Delivery)
                    .where(Delivery.id == delivery_id, Delivery.status == "pending",
                           Delivery.next_attempt_at == next_attempt_at)
                    .values(next_attempt_at=now + timedelta(seconds=DISPATCH_LEASE_S))
                )
                if moved.rowcount == 1:
                    dispatched.append(delivery_id)
        for delivery_id in dispatched:
            self.app.send_task(DELIVER_TASK, args=[delivery_id], queue=NOTIFY_QUEUE)
        return len(dispatched)
