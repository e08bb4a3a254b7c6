"""The outbox relay: publishes the ids of deliveries that are due to the notifier's queue.

Publishing moves a delivery's next attempt ``DISPATCH_LEASE_S`` into the future (compare-and-set),
so each due delivery is published once; if its message is lost, it is due again after the lease.
The message carries that new due time as its token: a message an earlier dispatch left in the queue
no longer matches and makes no attempt. Deliveries with an attempt in flight are not published, and
a tenant gets no more messages in one pass than it has free slots (``leases``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.notifier.leases import dispatch_token, not_leased
from shared.config.settings import NotifierSettings
from shared.db.engine import session_scope
from shared.db.models import Delivery, utcnow
from shared.periodic import PeriodicPass
from shared.queue import DELIVER_TASK, NOTIFY_QUEUE

log = logging.getLogger("vlmq.notifier")
DISPATCH_LEASE_S = 60.0
PASS_LIMIT = 200


class OutboxRelay(PeriodicPass):
    name = "vlmq-outbox-relay"

    def __init__(self, app: Celery, settings: NotifierSettings):
        super().__init__(settings.notifier_poll_s, log)
        self.app, self.settings = app, settings

    def run_once(self) -> int:
        now = utcnow()
        due_until = now + timedelta(seconds=DISPATCH_LEASE_S)
        with session_scope(self.settings.resolved_database_url) as session:
            dispatched = []
            for delivery_id, next_attempt_at in due(session, now, tenant_limit=self.settings.webhook_tenant_concurrency):
                moved = session.execute(
                    update(Delivery)
                    .where(Delivery.id == delivery_id, Delivery.status == "pending",
                           Delivery.next_attempt_at == next_attempt_at, not_leased(now))
                    .values(next_attempt_at=due_until)
                )
                if moved.rowcount == 1:
                    dispatched.append(delivery_id)
        for delivery_id in dispatched:
            self.app.send_task(DELIVER_TASK, args=[delivery_id, dispatch_token(due_until)], queue=NOTIFY_QUEUE)
        return len(dispatched)


def due(session: Session, now: datetime, *, tenant_limit: int) -> list[tuple[str, datetime]]:
    """Due deliveries with no attempt in flight, oldest first, at most as many of a tenant's as it
    has slots free: a tenant with thousands due does not crowd the others out of a pass."""
    busy = (
        select(Delivery.tenant_id, func.count().label("in_flight"))
        .where(Delivery.status == "pending", Delivery.leased_until > now)
        .group_by(Delivery.tenant_id)
        .subquery()
    )
    ranked = (
        select(Delivery.id, Delivery.next_attempt_at, Delivery.tenant_id,
               func.row_number().over(partition_by=Delivery.tenant_id, order_by=Delivery.next_attempt_at).label("rank"))
        .where(Delivery.status == "pending", Delivery.next_attempt_at <= now, not_leased(now))
        .subquery()
    )
    rows = session.execute(
        select(ranked.c.id, ranked.c.next_attempt_at)
        .outerjoin(busy, busy.c.tenant_id == ranked.c.tenant_id)
        .where(ranked.c.rank <= tenant_limit - func.coalesce(busy.c.in_flight, 0))
        .order_by(ranked.c.next_attempt_at)
        .limit(PASS_LIMIT)
    ).all()
    return [(delivery_id, next_attempt_at) for delivery_id, next_attempt_at in rows]
