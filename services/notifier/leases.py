"""Who may make a delivery's next attempt, and when: one attempt of a delivery in flight at a time,
and at most ``webhook_tenant_concurrency`` of a tenant's over every notifier process.

An attempt holds a lease (``deliveries.leased_until``) from its claim until it is settled; the lease
outlasts the attempt's deadline, so neither the relay nor a redelivery starts a second attempt while
the first can still be running. A sender that crashed mid-attempt loses its lease when it ends, and
the delivery is due again then. The leases in force are also the tenant's slots.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from shared.db.models import Delivery, utcnow

log = logging.getLogger("vlmq.notifier")
ATTEMPT_DEADLINE_S = 10.0  # API.md's "10 s timeout", for the whole attempt
# The deadline, and room for what it does not bound: the name lookup (glibc's resolver may take
# 30 s at worst) and the database writes around the attempt.
ATTEMPT_LEASE_S = 60.0
DEFER_S = 2.0  # a delivery whose tenant is at its limit is due again this much later


@dataclass(frozen=True)
class Claimed:
    attempt: int
    url: str
    payload: dict[str, Any]
    tenant_id: str


def dispatch_token(next_attempt_at: datetime) -> str:
    """What a published message carries: the due time its dispatch wrote, which no later change keeps."""
    return next_attempt_at.isoformat()


def not_leased(now: datetime):
    return or_(Delivery.leased_until.is_(None), Delivery.leased_until <= now)


def in_flight_of(tenant_id: str, now: datetime):
    return select(func.count()).where(
        Delivery.tenant_id == tenant_id, Delivery.status == "pending", Delivery.leased_until > now
    )


def claim(session: Session, delivery_id: str, token: str | None, *, tenant_limit: int) -> Claimed | None:
    """The next attempt, leased, if this message may make it now; None when the message is stale
    (published again since, settled, or an attempt is in flight) or the tenant has no free slot (the
    delivery is then deferred: due again in DEFER_S, its attempts unchanged)."""
    if token is None:
        # A message published before dispatch tokens: the relay publishes the delivery again once
        # that dispatch's lease ends.
        return None
    dispatched = datetime.fromisoformat(token)
    row = session.get(Delivery, delivery_id)
    if row is None or row.status != "pending":
        return None
    seen, found = row.attempts, Claimed(row.attempts + 1, row.url, row.payload, row.tenant_id)
    now = utcnow()
    this_dispatch = (Delivery.id == delivery_id, Delivery.status == "pending", Delivery.next_attempt_at == dispatched)
    _lock_tenant(session, found.tenant_id)
    if session.scalar(in_flight_of(found.tenant_id, now)) >= tenant_limit:
        session.execute(update(Delivery).where(*this_dispatch).values(next_attempt_at=now + timedelta(seconds=DEFER_S)))
        log.info("delivery %s deferred: tenant %s is at its limit of %d attempts in flight", delivery_id,
                 found.tenant_id, tenant_limit)
        return None
    lease = now + timedelta(seconds=ATTEMPT_LEASE_S)
    claimed = session.execute(
        update(Delivery)
        .where(*this_dispatch, Delivery.attempts == seen, not_leased(now))
        .values(attempts=found.attempt, leased_until=lease, next_attempt_at=lease)
    )
    return found if claimed.rowcount == 1 else None


def _lock_tenant(session: Session, tenant_id: str) -> None:
    """Claims of one tenant's deliveries take turns, so that two senders cannot both take its last
    slot. PostgreSQL: a transaction-scoped advisory lock; SQLite (one host, embedded) has none."""
    if session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.blake2b(f"vlmq.webhook-tenant:{tenant_id}".encode(), digest_size=8).digest()
    session.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest, "big", signed=True))))
