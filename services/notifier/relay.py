"""The outbox relay: publishes the ids of deliveries that are due to the notifier's queue.

Publishing moves a delivery's next attempt ``DISPATCH_LEASE_S`` into the future (compare-and-set),
so each due delivery is published once; if its message is lost, it is due again after the lease.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy import select, update

from shared.config.settings import NotifierSettings
from shared.db.engine import session_scope
from shared.db.models import Delivery, utcnow
from shared.periodic import PeriodicPass
from shared.queue import DELIVER_TASK, NOTIFY_QUEUE

log = logging.getLogger("vlmq.notifier")
DISPATCH_LEASE_S = 60.0


class OutboxRelay(PeriodicPass):
    name = "vlmq-outbox-relay"

    def __init__(self, app: Celery, settings: NotifierSettings):
        super().__init__(settings.notifier_poll_s, log)
        self.app, self.settings = app, settings

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
