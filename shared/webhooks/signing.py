"""Standard Webhooks signing with the tenant's secret; a rotated-out secret signs for 24 h more."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from shared.db.models import Tenant, WebhookSecret, utcnow

PREVIOUS_SECRET_VALID_FOR = timedelta(hours=24)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_for(session: Session, tenant_id: str) -> WebhookSecret:
    """The tenant's secret row, created on first use."""
    row = session.get(WebhookSecret, tenant_id)
    if row is not None:
        return row
    # Two first deliveries of a tenant may race to create it: the loser's insert fails inside a
    # savepoint, and it takes the winner's row.
    if session.get(Tenant, tenant_id) is None:
        _insert_unless_present(session, Tenant(id=tenant_id))
    _insert_unless_present(session, WebhookSecret(tenant_id=tenant_id, secret=new_secret()))
    return session.get(WebhookSecret, tenant_id, populate_existing=True)


def _insert_unless_present(session: Session, row) -> None:
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # another transaction inserted it first; the savepoint is rolled back
        if row in session:
            session.expunge(row)


def rotate_secret(session: Session, tenant_id: str) -> WebhookSecret:
    row = secret_for(session, tenant_id)
    row.previous_secret, row.previous_expires_at = row.secret, utcnow() + PREVIOUS_SECRET_VALID_FOR
    row.secret = new_secret()
    session.flush()
    return row


def signing_secrets(row: WebhookSecret, *, now: datetime | None = None) -> list[str]:
    """The current secret, and the previous one while it is still valid."""
    now = now or utcnow()
    active = [row.secret]
    if row.previous_secret and row.previous_expires_at and row.previous_expires_at > now:
        active.append(row.previous_secret)
    return active


def signature_header(secrets_: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """``v1,<sig>`` per secret, space-separated: receivers accept any one that verifies."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets_)
