"""``POST /v1/jobs``: read the body, hand the job to the submitter, and say whether it is new."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from services.api.body import JobBodyReader
from services.api.catalog import ModelCatalog
from services.api.context_budget import prompt_budget
from services.api.errors import IdempotencyKeyReused
from services.api.idempotency import KeyedRequest, Replayed, request_sha256
from services.api.jobs import read_job_public
from services.api.multipart import discard_new_media
from services.api.schemas import JobPublic
from services.api.submission import public_from_row
from services.api.submitter import JobSubmitter, Submission, Unresolved
from shared.config.settings import ApiSettings
from shared.storage import ObjectStore


@dataclass
class Created:
    job: JobPublic
    replayed: bool  # an earlier request with the same Idempotency-Key and body made this job


async def create_job_from_request(
    request: Request,
    *,
    tenant_id: str,
    idempotency_key: str | None,
    settings: ApiSettings,
    store: ObjectStore,
    submitter: JobSubmitter,
    catalog: ModelCatalog,
) -> Created:
    reader = JobBodyReader(settings=settings, store=store, tenant_id=tenant_id, keep_files=True)
    body = await reader.read(request)
    keyed = None
    if idempotency_key is not None:
        keyed = KeyedRequest(idempotency_key, request_sha256(body.spec, refs=body.refs, media=body.media))
    try:
        model_id = catalog.resolve(body.spec.model)
        n_media = len(body.media) if body.media is not None else len(body.refs)
        budget = await run_in_threadpool(prompt_budget, body.spec, catalog.checkpoints.get(model_id), n_media=n_media)
        if budget is not None and body.media is not None:  # known media: refused before the submitter
            budget.check(body.media)
    except Exception:
        await run_in_threadpool(discard_new_media, store, body.media or [])
        raise
    try:
        submission = Submission(tenant_id, body.spec, model_id, media=body.media, refs=body.refs, keyed=keyed,
                                budget=budget)
        outcome = await asyncio.wrap_future(submitter.submit(submission))
        if isinstance(outcome, Unresolved):  # objects written to storage directly: inspect them once
            media = [known or await reader.inspect(key) for key, known in zip(outcome.keys, outcome.media, strict=True)]
            retry = Submission(tenant_id, body.spec, model_id, media=media, keyed=keyed, budget=budget)
            outcome = await asyncio.wrap_future(submitter.submit(retry))
    except IdempotencyKeyReused:
        # No job uses the files this request brought: the key's job was made from other content.
        await run_in_threadpool(discard_new_media, store, body.media or [])
        raise
    if isinstance(outcome, Replayed):
        job = await run_in_threadpool(read_job_public, settings.resolved_database_url, tenant_id, outcome.job_id)
        return Created(job, replayed=True)
    return Created(public_from_row(outcome), replayed=False)
