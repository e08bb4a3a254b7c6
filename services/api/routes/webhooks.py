"""Webhook secret, delivery history and redelivery (API.md, "Webhooks")."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import select, update

from services.api.deps import SessionDep, TenantDep
from services.api.jobs import get_job
from services.api.ownership import owned_or_404
from shared.db.models import Delivery, DeliveryAttempt, WebhookEndpoint, utcnow
from shared.webhooks import rotate_secret, secret_for, signing_secrets

router = APIRouter(prefix="/v1", tags=["webhooks"])


class WebhookSecretPublic(BaseModel):
    secret: str
    # After a rotation the previous secret still signs (a second signature) until this time.
    previous_secret_expires_at: datetime | None = None


class DeliveryAttemptPublic(BaseModel):
    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None


class DeliveryPublic(BaseModel):
    id: str
    event_type: str
    url: str
    status: str
    attempts: list[DeliveryAttemptPublic]
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None


class DeliveriesPublic(BaseModel):
    data: list[DeliveryPublic]


def _secret_public(row) -> WebhookSecretPublic:
    still_valid = len(signing_secrets(row)) > 1
    return WebhookSecretPublic(secret=row.secret, previous_secret_expires_at=row.previous_expires_at if still_valid else None)


@router.get("/webhook-secret", response_model=WebhookSecretPublic)
def read_webhook_secret(tenant: TenantDep, session: SessionDep) -> WebhookSecretPublic:
    row = secret_for(session, tenant)
    session.commit()
    return _secret_public(row)


@router.post("/webhook-secret/rotate", response_model=WebhookSecretPublic)
def rotate_webhook_secret(tenant: TenantDep, session: SessionDep) -> WebhookSecretPublic:
    row = rotate_secret(session, tenant)
    session.commit()
    return _secret_public(row)


def _delivery_public(session, delivery: Delivery) -> DeliveryPublic:
    attempts = session.scalars(
        select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery.id).order_by(DeliveryAttempt.attempt)
    ).all()
    return DeliveryPublic(
        id=delivery.id,
        event_type=delivery.event_type,
        url=delivery.url,
        status=delivery.status,
        attempts=[DeliveryAttemptPublic.model_validate(attempt, from_attributes=True) for attempt in attempts],
        next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        finished_at=delivery.finished_at,
    )


@router.get("/jobs/{job_id}/deliveries", response_model=DeliveriesPublic, tags=["jobs"])
def read_job_deliveries(job_id: str, tenant: TenantDep, session: SessionDep) -> DeliveriesPublic:
    get_job(session, tenant, job_id)
    deliveries = session.scalars(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id)).all()
    return DeliveriesPublic(data=[_delivery_public(session, delivery) for delivery in deliveries])


@router.post("/deliveries/{delivery_id}/redeliver", response_model=DeliveryPublic)
def redeliver(delivery_id: str, tenant: TenantDep, session: SessionDep) -> DeliveryPublic:
    """Send it again: pending and due now, with the same webhook-id and payload. Asking for it is
    taken as the receiver being back: an endpoint a 410 disabled is enabled again."""
    delivery = owned_or_404(session, Delivery, delivery_id, tenant, message=f"no delivery {delivery_id}",
                            code="delivery_not_found")
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant, WebhookEndpoint.url == delivery.url)
        .values(disabled_at=None, disabled_reason=None)
    )
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id)
        .values(status="pending", next_attempt_at=utcnow(), finished_at=None)
    )
    session.commit()
    session.refresh(delivery)
    return _delivery_public(session, delivery)
