"""Job events become delivery rows (the outbox) in the transaction of the transition that caused them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from shared.db.documents import index_document, job_fields
from shared.db.models import (
    Batch,
    Delivery,
    Job,
    JobResult,
    VideoIndex,
    WebhookEndpoint,
    utcnow,
)
from shared.ids import new_id

JOB_EVENT_TYPES = ("job.started", "job.succeeded", "job.failed", "job.canceled")
DEFAULT_EVENTS = ("job.succeeded", "job.failed", "job.canceled")  # API.md: the terminal ones
INDEX_EVENT_TYPES = ("video_index.completed",)
# OpenAI's names for a batch's ends (an extension of API.md's types).
BATCH_EVENT_TYPES = ("batch.completed", "batch.failed", "batch.cancelled", "batch.expired")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def job_document(job: Job, result: dict[str, Any] | None) -> dict[str, Any]:
    """The job object as JSON values, the way the API serves it."""
    fields = job_fields(job, result)
    return fields | {key: _iso(fields[key]) for key in ("created_at", "started_at", "finished_at")}


def record_index_event(session: Session, index_id: str, event_type: str) -> Delivery | None:
    """A pending delivery of an index event (``video_index.completed``) to the index's webhook."""
    index = session.get(VideoIndex, index_id, populate_existing=True)
    if index is None or not index.webhook or not index.webhook.get("url"):
        return None
    if event_type not in (index.webhook.get("events") or INDEX_EVENT_TYPES):
        return None
    document = index_document(index)
    document |= {key: _iso(document[key]) for key in ("created_at", "started_at", "finished_at")}
    return _add_delivery(session, index.tenant_id, None, event_type, index.webhook["url"], document)


def record_batch_event(session: Session, batch_id: str, event_type: str) -> Delivery | None:
    """A pending delivery of a batch's end to the webhook it was created with, the batch object as data."""
    # Imported here: shared.jobs imports this module while it loads, and batch documents need it.
    from shared.batches.documents import batch_document

    batch = session.get(Batch, batch_id, populate_existing=True)
    if batch is None or not batch.webhook or event_type not in (batch.webhook.get("events") or BATCH_EVENT_TYPES):
        return None
    return _add_delivery(session, batch.tenant_id, None, event_type, batch.webhook["url"], batch_document(session, batch))


def record_job_event(session: Session, job_id: str, event_type: str, *, result: dict[str, Any] | None = None) -> Delivery | None:
    """A pending delivery of ``event_type`` if the job has a webhook that wants it."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or not job.webhook or not job.webhook.get("url"):
        return None
    if event_type not in (job.webhook.get("events") or DEFAULT_EVENTS):
        return None
    if result is None and job.status == "succeeded":
        stored = session.get(JobResult, job_id)
        result = stored.result if stored else None
    return _add_delivery(session, job.tenant_id, job.id, event_type, job.webhook["url"], job_document(job, result))


def _add_delivery(session: Session, tenant_id: str, job_id: str | None, event_type: str, url: str,
                  data: dict[str, Any]) -> Delivery:
    endpoint = session.get(WebhookEndpoint, (tenant_id, url))
    now = utcnow()
    delivery = Delivery(
        id=new_id("msg"),
        tenant_id=tenant_id,
        job_id=job_id,
        event_type=event_type,
        url=url,
        payload={"type": event_type, "timestamp": _iso(now), "data": data},
        attempts=0,
        created_at=now,
    )
    if endpoint is not None and endpoint.disabled_at is not None:
        # The receiver said 410 Gone: nothing more goes there, but the event is still on record.
        delivery.status, delivery.finished_at = "failed", now
        delivery.last_error = f"endpoint disabled: {endpoint.disabled_reason}"
    else:
        delivery.status, delivery.next_attempt_at = "pending", now
    session.add(delivery)
    return delivery
