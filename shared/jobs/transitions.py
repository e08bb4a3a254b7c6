"""Guarded transitions as compare-and-set UPDATEs on (status, attempts).

A transition succeeds only if the row is still in the status (and attempt) the caller saw, so two
workers racing on one job cannot both win, and a stale attempt cannot overwrite a newer one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.db.models import Job, JobResult, utcnow
from shared.jobs.errors import JobNotFound, StaleTransition
from shared.jobs.states import ALLOWED_TRANSITIONS, JobStatus


def _transition(
    session: Session,
    job_id: str,
    *,
    from_status: JobStatus,
    to_status: JobStatus,
    attempt: int | None,
    values: dict[str, Any],
) -> None:
    if to_status not in ALLOWED_TRANSITIONS[from_status]:
        raise StaleTransition(f"{from_status.value} → {to_status.value} is not a job transition")
    statement = update(Job).where(Job.id == job_id, Job.status == from_status.value)
    if attempt is not None:
        statement = statement.where(Job.attempts == attempt)
    outcome = session.execute(statement.values(status=to_status.value, **values))
    if outcome.rowcount != 1:
        current = session.get(Job, job_id, populate_existing=True)
        if current is None:
            raise JobNotFound(job_id)
        raise StaleTransition(
            f"job {job_id} is {current.status} (attempt {current.attempts}), "
            f"expected {from_status.value} (attempt {attempt})"
        )


def start_job(session: Session, job_id: str, *, seen_attempts: int) -> int:
    """queued → running; returns the attempt number this run owns."""
    attempt = seen_attempts + 1
    _transition(
        session,
        job_id,
        from_status=JobStatus.queued,
        to_status=JobStatus.running,
        attempt=seen_attempts,
        values={"attempts": attempt, "started_at": utcnow()},
    )
    return attempt


def finish_job(session: Session, job_id: str, *, attempt: int, result: dict[str, Any]) -> None:
    """running → succeeded, storing the result of exactly this attempt."""
    _transition(
        session,
        job_id,
        from_status=JobStatus.running,
        to_status=JobStatus.succeeded,
        attempt=attempt,
        values={"finished_at": utcnow(), "error": None},
    )
    session.add(JobResult(job_id=job_id, attempt=attempt, result=result))


def fail_job(
    session: Session,
    job_id: str,
    *,
    from_status: JobStatus,
    attempt: int | None,
    code: str,
    message: str,
) -> None:
    """queued|running → failed with a reason code."""
    _transition(
        session,
        job_id,
        from_status=from_status,
        to_status=JobStatus.failed,
        attempt=attempt,
        values={"finished_at": utcnow(), "error": {"code": code, "message": message}},
    )
