"""``GET /v1/jobs/{id}/events``: a job's life as Server-Sent Events.

``status`` events as the job's status changes, ``delta`` events with the text of a ``stream: true``
job as the worker generates it (``shared.jobs.deltas``, read from its first entry, so a late client
still gets all of it), and a final ``job`` event with the job object, after which the stream ends.

Statuses come from the process's ``JobWaiter``, which reads every open stream's job in one query
per tick: a transition that comes and goes between two reads is not seen, except that a job first
seen finished is always reported as having run first, the way every job that ran did.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from services.api.jobs import read_job_public
from services.api.waiting import UNSEEN, JobWaiter
from shared.jobs import JobStatus
from shared.jobs.deltas import deltas_key
from shared.queue import redis_url_of

POLL_S = 0.25


def deltas_reader(broker_url: str) -> aioredis.Redis | None:
    url = redis_url_of(broker_url)
    return aioredis.Redis.from_url(url, socket_timeout=10.0, decode_responses=True) if url else None


def _status_event(job_id: str, status: str) -> dict:
    return {"event": "status", "data": json.dumps({"id": job_id, "status": status})}


async def job_events(database_url: str, tenant_id: str, job_id: str, deltas: aioredis.Redis | None,
                     waiter: JobWaiter) -> AsyncIterator[dict]:
    """The caller has checked that the job is the tenant's (404 otherwise)."""
    with waiter.watching(job_id):
        async for event in _job_events(database_url, tenant_id, job_id, deltas, waiter):
            yield event


async def _job_events(database_url: str, tenant_id: str, job_id: str, deltas: aioredis.Redis | None,
                      waiter: JobWaiter) -> AsyncIterator[dict]:
    job = await run_in_threadpool(read_job_public, database_url, tenant_id, job_id)
    status, reported_running = job.status.value, job.status is not JobStatus.queued
    yield _status_event(job_id, status)
    last_id = "0-0"
    while not JobStatus(status).is_terminal():
        if deltas is not None:
            for delta, entry_id in await _deltas_after(deltas, job_id, last_id, block_ms=int(POLL_S * 1000)):
                last_id = entry_id
                yield delta
        else:
            await asyncio.sleep(POLL_S)
        observed = waiter.latest(job_id)
        if observed is UNSEEN:
            continue
        if observed is None:  # deleted meanwhile: nothing more will happen to it
            return
        current, started_at = observed
        if current == status:
            continue
        if JobStatus(current).is_terminal() and not reported_running and started_at is not None:
            yield _status_event(job_id, JobStatus.running.value)
        reported_running |= current != JobStatus.queued.value
        status = current
        yield _status_event(job_id, status)
    if deltas is not None:  # the worker sends the last of the text before it records the result
        for delta, _entry_id in await _deltas_after(deltas, job_id, last_id, block_ms=None):
            yield delta
    job = await run_in_threadpool(read_job_public, database_url, tenant_id, job_id)
    yield {"event": "job", "data": job.model_dump_json()}


async def _deltas_after(deltas: aioredis.Redis, job_id: str, last_id: str,
                        block_ms: int | None) -> list[tuple[dict, str]]:
    try:
        answer = await deltas.xread({deltas_key(job_id): last_id}, count=500, block=block_ms)
    except aioredis.RedisError:  # no text for now; statuses and the final job still come
        await asyncio.sleep(POLL_S)
        return []
    events = []
    for _key, entries in answer or []:
        for entry_id, fields in entries:
            data = {"text": fields["text"], "attempt": int(fields["attempt"])}
            events.append(({"event": "delta", "data": json.dumps(data)}, entry_id))
    return events
