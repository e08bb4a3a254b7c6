"""/v1/batches: OpenAI's Batch API. Each line of the input file becomes an ordinary vlmq chat job;
the frames worker expands the file and writes the output and error files (``workers.frames.batches``)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from services.api.deps import LimiterDep, SessionDep, SettingsDep, TenantDep
from services.api.openai.batches import (
    BatchCreate,
    BatchNotCancellableError,
    create_batch,
    get_batch,
    list_batches,
)
from services.api.openai.pages import page
from services.api.request_body import read_capped_body, validation_failure
from services.api.submission import refuse_unreachable_webhook
from shared.batches.documents import batch_document
from shared.batches.progress import BatchNotCancellable, request_cancel
from shared.db.engine import session_scope
from shared.queue import EXPAND_BATCH_TASK, FRAMES_QUEUE, SETTLE_BATCH_TASK

log = logging.getLogger("vlmq.api")
router = APIRouter(prefix="/v1/batches", tags=["openai"])


def _ring(request: Request, task: str, batch_id: str) -> None:
    """A doorbell only: if the broker is away, the frames worker's sweep finds the batch anyway."""
    try:
        request.app.state.celery.send_task(task, args=[batch_id], queue=FRAMES_QUEUE, retry=False)
    except Exception as error:  # noqa: BLE001  (kombu raises several unrelated types for a broker that is down)
        log.warning("could not publish %s for %s: %s", task, batch_id, error)


@router.post("", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
    "schema": BatchCreate.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
async def create(request: Request, tenant: TenantDep, settings: SettingsDep, limiter: LimiterDep) -> dict:
    """A batch over an uploaded file (purpose ``batch``); counted as one creation by the tenant's limits."""
    body = await read_capped_body(request, 64 * 1024, "batch requests are limited to {limit} bytes")
    try:
        wanted = BatchCreate.model_validate_json(body or b"{}")
    except ValidationError as error:
        raise validation_failure(error) from None
    refuse_unreachable_webhook(wanted.webhook, allow_private=settings.allow_private_networks)
    await limiter.admit_job(tenant_id=tenant, idempotency_key=None)

    def insert() -> dict:
        with session_scope(settings.resolved_database_url) as session:
            batch = create_batch(session, tenant, wanted)
            return batch_document(session, batch)

    document = await run_in_threadpool(insert)
    _ring(request, EXPAND_BATCH_TASK, document["id"])
    return document


@router.get("")
def read_batches(tenant: TenantDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                 after: str | None = None) -> dict:
    batches, has_more = list_batches(session, tenant, limit=limit, after=after)
    return page([batch_document(session, batch) for batch in batches], has_more)


@router.get("/{batch_id}")
def read_batch(batch_id: str, tenant: TenantDep, session: SessionDep) -> dict:
    return batch_document(session, get_batch(session, tenant, batch_id))


@router.post("/{batch_id}/cancel")
def cancel(batch_id: str, request: Request, tenant: TenantDep, session: SessionDep) -> dict:
    """cancelling at once; its queued and running jobs are cancelled and its files written shortly
    after, when it becomes cancelled (completed lines stay in its output file)."""
    batch = get_batch(session, tenant, batch_id)
    try:
        batch = request_cancel(session, batch)
    except BatchNotCancellable as refusal:
        raise BatchNotCancellableError(str(refusal)) from None
    session.commit()
    _ring(request, SETTLE_BATCH_TASK, batch_id)
    return batch_document(session, batch)
