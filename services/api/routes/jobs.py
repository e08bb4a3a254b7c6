"""/v1/jobs: create, plan, get, list."""

from __future__ import annotations

import asyncio

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from services.api.body import JobBodyReader
from services.api.deps import CatalogDep, SessionDep, SettingsDep, StorageDep, SubmitterDep, TenantDep
from services.api.jobs import get_job, job_public, list_jobs, results_for
from services.api.multipart import discard_new_media
from services.api.planning import plan_job
from services.api.schemas import JobPublic, JobsPublic, PlanPublic
from services.api.submission import public_from_row
from services.api.submitter import Submission, Unresolved
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


@router.post("", status_code=202, response_model=JobPublic, openapi_extra=_BODY_DOC)
async def create_job(
    request: Request,
    response: Response,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StorageDep,
    submitter: SubmitterDep,
    catalog: CatalogDep,
) -> JobPublic:
    reader = JobBodyReader(settings=settings, store=store, tenant_id=tenant, keep_files=True)
    body = await reader.read(request)
    try:
        model_id = catalog.resolve(body.spec.model)
    except Exception:
        await run_in_threadpool(discard_new_media, store, body.media or [])
        raise
    submission = Submission(tenant, body.spec, model_id, media=body.media, refs=body.refs)
    outcome = await asyncio.wrap_future(submitter.submit(submission))
    if isinstance(outcome, Unresolved):  # objects written to storage directly: inspect them once
        media = [known or await reader.inspect(key) for key, known in zip(outcome.keys, outcome.media, strict=True)]
        outcome = await asyncio.wrap_future(submitter.submit(Submission(tenant, body.spec, model_id, media=media)))
    response.headers["Location"] = f"/v1/jobs/{outcome['id']}"
    return public_from_row(outcome)


@router.post("/plan", response_model=PlanPublic, openapi_extra=_BODY_DOC)
async def plan(
    request: Request, tenant: TenantDep, settings: SettingsDep, store: StorageDep, catalog: CatalogDep
) -> PlanPublic:
    reader = JobBodyReader(settings=settings, store=store, tenant_id=tenant, keep_files=False)
    spec, media = await reader.read_resolved(request)
    model_id = catalog.resolve(spec.model)
    return plan_job(spec, media, model_id=model_id, checkpoint=catalog.checkpoint(model_id))


@router.get("/{job_id}", response_model=JobPublic)
def read_job(job_id: str, tenant: TenantDep, session: SessionDep) -> JobPublic:
    job = get_job(session, tenant, job_id)
    return job_public(job, results_for(session, [job]).get(job.id))


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
