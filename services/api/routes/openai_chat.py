"""``POST /v1/chat/completions``: OpenAI's chat completions, each one an ordinary vlmq ``chat`` job.

The job is created like any other (same queue, limits, tenancy; it stays in ``GET /v1/jobs``), then
the request waits for it: the whole completion at once, or with ``stream: true`` its text as the
worker generates it, as OpenAI's ``chat.completion.chunk`` events ending with ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from services.api.context_budget import prompt_budget
from services.api.deps import (
    CatalogDep,
    IdempotencyKeyDep,
    LimiterDep,
    SettingsDep,
    StorageDep,
    SubmitterDep,
    TenantDep,
    WaiterDep,
)
from services.api.errors import ApiError, openai_error_body
from services.api.events import job_events
from services.api.idempotency import KeyedRequest, Replayed, request_sha256
from services.api.ingest import media_failure_error
from services.api.jobs import read_job_public
from services.api.multipart import discard_new_media
from services.api.openai.chat_request import (
    ChatCompletionRequest,
    chat_job,
    request_refusal,
)
from services.api.openai.completions import (
    chunk_object,
    completion_object,
    failed_job_error,
    usage,
)
from services.api.openai.images import ImageRefused, images_media
from services.api.request_body import parse_body, read_capped_body, validation_failure
from services.api.schemas import InputRef, JobPublic
from services.api.submitter import Submission
from shared.jobs import JobStatus
from shared.media import PendingUrl, StoredMedia

router = APIRouter(prefix="/v1/chat", tags=["openai"])

# Errors after which a retry would only run the same work again: the openai client honours this.
_NO_RETRY = {"x-should-retry": "false"}


def read_chat_request(body: bytes) -> ChatCompletionRequest:
    """The request, or 400 in OpenAI's words (an unknown field is named, as OpenAI names it)."""
    try:
        return ChatCompletionRequest.model_validate_json(body or b"{}")
    except ValidationError as error:
        raise request_refusal(error) from None


@router.post(
    "/completions",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}},
    responses={200: {"description": "A `chat.completion` object, or with `stream: true` an event stream of "
                     "`chat.completion.chunk` objects ending with `data: [DONE]`. Header `x-vlmq-job-id` names "
                     "the job.", "content": {"application/json": {}, "text/event-stream": {}}}},
)
async def create_chat_completion(
    request: Request,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StorageDep,
    submitter: SubmitterDep,
    catalog: CatalogDep,
    waiter: WaiterDep,
    limiter: LimiterDep,
    idempotency_key: IdempotencyKeyDep = None,
):
    await limiter.admit_job(tenant_id=tenant, idempotency_key=idempotency_key)
    body = await read_capped_body(request, settings.openai_max_request_bytes,
                                  "chat completion bodies are limited to {limit} bytes")
    chat = await parse_body(read_chat_request, body)
    try:
        wanted = chat_job(chat)
    except ValidationError as error:
        raise validation_failure(error) from None
    model_id = catalog.resolve(wanted.spec.model)
    try:
        media = await run_in_threadpool(images_media, wanted.image_urls, store=store, tenant_id=tenant,
                                        settings=settings)
    except ImageRefused as refusal:
        raise media_failure_error(refusal.code, refusal.message, transient=False) from None
    try:
        budget = await run_in_threadpool(prompt_budget, wanted.spec, catalog.checkpoints.get(model_id),
                                         n_media=len(media))
    except Exception:
        await run_in_threadpool(discard_new_media, store, media)
        raise
    keyed = None
    if idempotency_key is not None:  # the same request: the same spec and the same images
        urls = [InputRef(url=item.url) for item in media if isinstance(item, PendingUrl)]
        stored = [item for item in media if isinstance(item, StoredMedia)]
        keyed = KeyedRequest(idempotency_key, request_sha256(wanted.spec, refs=urls, media=stored))
    try:
        outcome = await asyncio.wrap_future(submitter.submit(Submission(tenant, wanted.spec, model_id, media=media,
                                                                        keyed=keyed, budget=budget)))
    except ApiError:
        await run_in_threadpool(discard_new_media, store, media)
        raise
    job_id = outcome.job_id if isinstance(outcome, Replayed) else outcome["id"]
    headers = {"x-vlmq-job-id": job_id}
    if chat.stream:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        chunks = _completion_chunks(request, tenant, job_id, include_usage=include_usage)
        return EventSourceResponse(chunks, ping=15, headers=headers)
    await waiter.wait(job_id, settings.chat_completion_wait_s)
    job = await run_in_threadpool(read_job_public, settings.resolved_database_url, tenant, job_id)
    return _completion_response(job, headers, waited_s=settings.chat_completion_wait_s)


def _completion_response(job: JobPublic, headers: dict[str, str], *, waited_s: float) -> JSONResponse:
    if job.status is JobStatus.succeeded:
        return JSONResponse(completion_object(job.id, job.created_at, job.model, job.result), headers=headers)
    if not job.status.is_terminal():
        message = (f"job {job.id} did not finish within {waited_s:g} s; it runs on: GET /v1/jobs/{job.id}")
        return JSONResponse(openai_error_body(504, "timeout", message), 504, headers | _NO_RETRY)
    status, error = failed_job_error(job.id, job.status.value, job.error.model_dump() if job.error else None)
    return JSONResponse(error, status, headers | _NO_RETRY)


async def _completion_chunks(request: Request, tenant: str, job_id: str, *,
                             include_usage: bool) -> AsyncIterator[dict]:
    """The job's text deltas as chunks. Deltas come from the job's first attempt only: a retried
    attempt generates from the start again, and text already sent cannot be taken back."""
    settings = request.app.state.settings
    job = await run_in_threadpool(read_job_public, settings.resolved_database_url, tenant, job_id)
    created, model = int(job.created_at.timestamp()), job.model

    def chunk(**fields) -> dict:
        return {"data": json.dumps(chunk_object(job_id, created, model, **fields))}

    yield chunk(delta={"role": "assistant", "content": ""})
    sent, attempt, final = "", None, None
    async for event in job_events(settings.resolved_database_url, tenant, job_id, request.app.state.deltas,
                                  request.app.state.waiter):
        if event["event"] == "delta":
            delta = json.loads(event["data"])
            attempt = attempt or delta["attempt"]
            if delta["attempt"] == attempt and delta["text"]:
                sent += delta["text"]
                yield chunk(delta={"content": delta["text"]})
        elif event["event"] == "job":
            final = json.loads(event["data"])
    if final is None:  # the job was deleted while it ran
        yield {"data": json.dumps(openai_error_body(404, "job_not_found", f"job {job_id} was deleted"))}
    elif final["status"] == JobStatus.succeeded.value:
        text = final["result"]["text"]
        if text.startswith(sent) and len(text) > len(sent):  # whatever the deltas did not carry
            yield chunk(delta={"content": text[len(sent):]})
        yield chunk(delta={}, finish_reason=final["result"].get("finish_reason", "stop"))
        if include_usage:
            yield chunk(delta=None, usage_=usage(final["result"]))
    else:
        _, error = failed_job_error(job_id, final["status"], final["error"])
        yield {"data": json.dumps(error)}
    yield {"data": "[DONE]"}
