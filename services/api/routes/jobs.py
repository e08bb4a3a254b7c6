"""/v1/jobs: create, plan, get, list, cancel, delete."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from services.api.body import JobBodyReader
from services.api.creation import create_job_from_request
from services.api.deps import (
    CatalogDep,
    IdempotencyKeyDep,
    LimiterDep,
    SessionDep,
    SettingsDep,
    StorageDep,
    SubmitterDep,
    TenantDep,
    WaiterDep,
    WaitSecondsDep,
)
from services.api.events import job_events as stream_job_events
from services.api.jobs import (
    get_job,
    job_public,
    list_jobs,
    read_job_public,
    results_for,
)
from services.api.lifecycle import cancel_tenant_job, delete_tenant_job
from services.api.multipart import discard_new_media
from services.api.planning import plan_job, sample_plan_frames
from services.api.schemas import ErrorPublic, JobPublic, JobsPublic, PlanPublic
from shared.jobs import JobStatus, JobTask

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# Both body forms of API.md, for the OpenAPI document (the handler reads the raw stream itself).
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["request"],
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "request": {"type": "string", "description": "JSON of the JobSpec fields"},
                    },
                }
            },
        },
    }
}


_NOT_FOUND = {404: {"model": ErrorPublic, "description": "No such job for this API key's tenant."}}
_RATE_LIMITED = {"model": ErrorPublic, "description": "`rate_limited` (the tenant's jobs per minute) or "
                 "`too_many_queued_jobs` (its cap on queued jobs); `Retry-After` says when to try again."}


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    openapi_extra=_BODY_DOC,
    responses={
        200: {
            "model": JobPublic,
            "description": "The job an earlier request with the same `Idempotency-Key` created, or a job that "
            "ended while `Prefer: wait` held the response.",
        },
        409: {"model": ErrorPublic, "description": "`idempotency_key_reused`: the key came with another body."},
        429: _RATE_LIMITED,
    },
)
async def create_job(
    request: Request,
    response: Response,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StorageDep,
    submitter: SubmitterDep,
    catalog: CatalogDep,
    waiter: WaiterDep,
    wait_s: WaitSecondsDep,
    limiter: LimiterDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> JobPublic:
    await limiter.admit_job(tenant_id=tenant, idempotency_key=idempotency_key)
    created = await create_job_from_request(
        request, tenant_id=tenant, idempotency_key=idempotency_key,
        settings=settings, store=store, submitter=submitter, catalog=catalog,
    )
    job = created.job
    if wait_s and not job.status.is_terminal():
        await waiter.wait(job.id, wait_s)
        job = await run_in_threadpool(read_job_public, settings.resolved_database_url, tenant, job.id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if created.replayed or job.status.is_terminal():
        response.status_code = 200
    return job


@router.post("/plan", response_model=PlanPublic, openapi_extra=_BODY_DOC, responses={
    400: {"model": ErrorPublic, "description": "`context_length_exceeded`: the prompt's text and image tokens and "
          "`max_new_tokens` do not fit the model's context (as `POST /v1/jobs` would answer)."},
})
async def plan(
    request: Request, tenant: TenantDep, settings: SettingsDep, store: StorageDep, catalog: CatalogDep
) -> PlanPublic:
    # Files are stored (a video must be probed from storage) and removed again below.
    reader = JobBodyReader(settings=settings, store=store, tenant_id=tenant, keep_files=True)
    spec, media = await reader.read_resolved(request)
    try:
        model_id = catalog.resolve(spec.model)
        frames = None
        if spec.task.is_video:
            frames = await sample_plan_frames(store, media[0].object_key, spec.options.model_dump(), settings=settings)
        return await run_in_threadpool(
            partial(plan_job, spec, media, model_id=model_id, checkpoint=catalog.checkpoint(model_id), frames=frames)
        )
    finally:
        await run_in_threadpool(discard_new_media, store, media)


@router.get("/{job_id}", response_model=JobPublic)
def read_job(job_id: str, tenant: TenantDep, session: SessionDep) -> JobPublic:
    job = get_job(session, tenant, job_id)
    return job_public(job, results_for(session, [job]).get(job.id))


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": "`status`, `delta` and a final `job` event."},
    **_NOT_FOUND,
})
async def job_events(job_id: str, request: Request, tenant: TenantDep, settings: SettingsDep,
                     waiter: WaiterDep) -> EventSourceResponse:
    """The job's status changes, the text of a `stream: true` job as it is generated, then the job."""
    await run_in_threadpool(read_job_public, settings.resolved_database_url, tenant, job_id)  # 404 first
    events = stream_job_events(settings.resolved_database_url, tenant, job_id, request.app.state.deltas, waiter)
    return EventSourceResponse(events, ping=15)


@router.get("", response_model=JobsPublic)
def read_jobs(
    tenant: TenantDep,
    session: SessionDep,
    status: JobStatus | None = None,
    task: JobTask | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobsPublic:
    jobs, next_cursor = list_jobs(
        session,
        tenant,
        status=status.value if status else None,
        task=task.value if task else None,
        limit=limit,
        cursor=cursor,
    )
    results = results_for(session, jobs)
    return JobsPublic(data=[job_public(job, results.get(job.id)) for job in jobs], next_cursor=next_cursor)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses={
    **_NOT_FOUND, 409: {"model": ErrorPublic, "description": "`job_already_finished`: the job had already ended."},
})
def cancel_job(job_id: str, tenant: TenantDep, session: SessionDep) -> JobPublic:
    """Cancel a queued or running job; a running one stops at its worker's next heartbeat."""
    return cancel_tenant_job(session, tenant_id=tenant, job_id=job_id)


@router.delete("/{job_id}", status_code=204, response_class=Response, responses=_NOT_FOUND)
def delete_job(job_id: str, tenant: TenantDep, session: SessionDep, store: StorageDep) -> Response:
    """Remove the job (canceling it first if it has not ended), its result and its stored media,
    except media another of your jobs still uses."""
    delete_tenant_job(session, store, tenant_id=tenant, job_id=job_id)
    return Response(status_code=204)
