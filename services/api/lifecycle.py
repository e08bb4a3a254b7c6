"""Ending a job early and removing it: ``POST /v1/jobs/{id}/cancel`` and ``DELETE /v1/jobs/{id}``.

Status changes go through ``shared.jobs.cancel_job``; this module adds the tenant's view (another
tenant's job does not exist), the API's errors, and the removal of rows and stored media.
"""

from __future__ import annotations

import logging

from sqlalchemy import bindparam, delete, select, text
from sqlalchemy.orm import Session

from services.api.errors import Conflict, DependencyDown, JobAlreadyFinished, NotFound
from services.api.jobs import get_job, job_public, results_for
from services.api.schemas import JobPublic
from shared.db.models import Job, JobResult, Media
from shared.jobs import JobNotFound, JobStatus, StaleTransition, cancel_job
from shared.storage import InvalidObjectKey, ObjectStore, StorageError, is_tenant_key

log = logging.getLogger("vlmq.api")

# cancel_job compares status and attempt; a worker requeueing the job in between makes it stale
# without the job having ended, so the cancel is simply tried again on the row as it is now.
CANCEL_TRIES = 3


def cancel_tenant_job(session: Session, *, tenant_id: str, job_id: str) -> JobPublic:
    """queued|running → canceled; ``JobAlreadyFinished`` (409) when it had already ended."""
    get_job(session, tenant_id, job_id)
    _cancel_unless_finished(session, job_id, refuse_finished=True)
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:  # deleted the moment after
        raise NotFound(f"no job {job_id}", code="job_not_found")
    return job_public(job, results_for(session, [job]).get(job.id))


def _cancel_unless_finished(session: Session, job_id: str, *, refuse_finished: bool) -> None:
    for _ in range(CANCEL_TRIES):
        try:
            cancel_job(session, job_id)
            session.commit()
            return
        except JobNotFound:
            session.rollback()
            raise NotFound(f"no job {job_id}", code="job_not_found") from None
        except StaleTransition:
            session.rollback()
        current = session.get(Job, job_id, populate_existing=True)
        if current is None:
            raise NotFound(f"no job {job_id}", code="job_not_found")
        status = JobStatus(current.status)
        if status.is_terminal():
            if refuse_finished:
                raise JobAlreadyFinished(f"job {job_id} is already {status.value}", details={"status": status.value})
            return
    raise Conflict(f"job {job_id} kept changing state; retry the request", code="job_busy")


def delete_tenant_job(session: Session, store: ObjectStore, *, tenant_id: str, job_id: str) -> None:
    """Remove the job, its result, and each stored object it used that no other job of the tenant
    uses (media are content-addressed, so one object may serve many jobs). Only canonical keys under
    the tenant's own prefix are ever deleted from storage, whatever an older row says."""
    job = get_job(session, tenant_id, job_id)
    if not JobStatus(job.status).is_terminal():
        # Canceled (and committed) first, so its worker stops at its next heartbeat even if the
        # deletion below fails and is retried.
        _cancel_unless_finished(session, job_id, refuse_finished=False)
    # The row lock makes one of two concurrent deletes do the work; the other then finds nothing.
    job = session.scalar(
        select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id).with_for_update(),
        execution_options={"populate_existing": True},
    )
    if job is None:
        raise NotFound(f"no job {job_id}", code="job_not_found")
    keys = sorted({key for item in job.input.get("items", []) if (key := item.get("object_key"))})
    if keys:
        # Locked in key order before the reference check: two deletes of jobs sharing an object
        # serialise here, and the second sees the first's job gone and removes what it left.
        session.execute(
            select(Media.object_key)
            .where(Media.tenant_id == tenant_id, Media.object_key.in_(keys))
            .order_by(Media.object_key)
            .with_for_update()
        )
    session.execute(delete(JobResult).where(JobResult.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))
    orphaned = [key for key in keys if key not in referenced_object_keys(session, tenant_id, keys)]
    if orphaned:
        session.execute(delete(Media).where(Media.tenant_id == tenant_id, Media.object_key.in_(orphaned)))
    try:
        # Before the commit: a 204 means the bytes are gone too; a storage failure rolls the rows
        # back, and the client's retry deletes again (deleting a missing object is a no-op).
        for key in orphaned:
            if _own_stored_key(tenant_id, key):
                store.delete(key)
        frames = (job.prepared or {}).get("frames_key")  # a video job's sampled frames
        if frames and _own_stored_key(tenant_id, frames):
            store.delete(frames)
    except (StorageError, OSError) as error:
        session.rollback()
        log.error("could not delete the media of %s: %s", job_id, error)
        raise DependencyDown("storage is not reachable; the job was not deleted, retry") from error
    session.commit()


def _own_stored_key(tenant_id: str, key: str) -> bool:
    """Whether deleting ``key`` can only remove an object of the tenant's. Rows written before keys
    were checked may name ``tenants/bob/../alice/…``: their rows go, the object they point at stays."""
    try:
        return is_tenant_key(tenant_id, key)
    except InvalidObjectKey:
        log.warning("job of %s names a non-canonical object key %r; its object is left alone", tenant_id, key)
        return False


# Which of ``keys`` some job of the tenant still names in ``input.items``. PostgreSQL asks by JSONB
# containment (a GIN index on jobs.input would serve it); SQLite walks each job's items.
_REFERENCED_POSTGRESQL = text(
    "SELECT key FROM unnest(CAST(:keys AS text[])) AS key WHERE EXISTS ("
    " SELECT 1 FROM jobs WHERE jobs.tenant_id = :tenant_id AND jobs.input @> jsonb_build_object("
    "  'items', jsonb_build_array(jsonb_build_object('object_key', key))))"
)
_REFERENCED_SQLITE = text(
    "SELECT DISTINCT json_extract(item.value, '$.object_key') FROM jobs, json_each(jobs.input, '$.items') AS item"
    " WHERE jobs.tenant_id = :tenant_id AND json_extract(item.value, '$.object_key') IN :keys"
).bindparams(bindparam("keys", expanding=True))


def referenced_object_keys(session: Session, tenant_id: str, keys: list[str]) -> set[str]:
    if not keys:
        return set()
    query = _REFERENCED_POSTGRESQL if session.get_bind().dialect.name == "postgresql" else _REFERENCED_SQLITE
    return set(session.scalars(query, {"tenant_id": tenant_id, "keys": list(keys)}))
