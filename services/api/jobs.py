"""Reading jobs for the API: lookup, public view, listing with cursors."""

from __future__ import annotations

import base64
import binascii

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.api.errors import ValidationFailed
from services.api.ownership import owned_or_404
from services.api.schemas import JobPublic
from shared.db.documents import job_fields
from shared.db.engine import get_sessionmaker
from shared.db.models import Job, JobResult
from shared.jobs import JobStatus


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    return owned_or_404(session, Job, job_id, tenant_id, message=f"no job {job_id}", code="job_not_found")


def results_for(session: Session, jobs: list[Job]) -> dict[str, dict]:
    """The results of the succeeded ones among ``jobs``, in one query."""
    succeeded = [job.id for job in jobs if job.status == JobStatus.succeeded.value]
    if not succeeded:
        return {}
    rows = session.execute(select(JobResult.job_id, JobResult.result).where(JobResult.job_id.in_(succeeded)))
    return {job_id: result for job_id, result in rows}


def job_public(job: Job, result: dict | None) -> JobPublic:
    return JobPublic(**job_fields(job, result))


def read_job_public(database_url: str, tenant_id: str, job_id: str) -> JobPublic:
    """The job as ``GET /v1/jobs/{id}`` shows it, for handlers that hold no session of their own."""
    with get_sessionmaker(database_url)() as session:
        job = get_job(session, tenant_id, job_id)
        return job_public(job, results_for(session, [job]).get(job.id))


def encode_cursor(job_id: str) -> str:
    return base64.urlsafe_b64encode(job_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        job_id = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise ValidationFailed("invalid cursor", code="invalid_cursor") from error
    if not job_id.startswith("job_"):
        raise ValidationFailed("invalid cursor", code="invalid_cursor")
    return job_id


def list_jobs(
    session: Session, tenant_id: str, *, status: str | None, task: str | None, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """Newest first; ids sort by creation time, so the cursor is the last id seen."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        query = query.where(Job.status == status)
    if task:
        query = query.where(Job.task == task)
    if cursor:
        query = query.where(Job.id < decode_cursor(cursor))
    jobs = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    if len(jobs) > limit:
        return jobs[:limit], encode_cursor(jobs[limit - 1].id)
    return jobs, None
