"""Guarded transitions as compare-and-set UPDATEs on (status, attempts).

A transition succeeds only if the row is still in the status (and attempt) the caller saw, so two
workers racing on one job cannot both win, and a stale attempt cannot overwrite a newer one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db.models import Job, JobResult, utcnow
from shared.jobs.errors import JobNotFound, StaleTransition
from shared.jobs.states import ALLOWED_TRANSITIONS, JobStatus
from shared.metrics import record
from shared.webhooks.events import record_job_event


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


def start_job(session: Session, job_id: str, *, seen_attempts: int, lease_s: float = 30.0) -> int:
    """queued → running under a lease of ``lease_s``; returns the attempt number this run owns."""
    attempt = seen_attempts + 1
    now = utcnow()
    _transition(
        session,
        job_id,
        from_status=JobStatus.queued,
        to_status=JobStatus.running,
        attempt=seen_attempts,
        values={"attempts": attempt, "started_at": now, "lease_expires_at": now + timedelta(seconds=lease_s)},
    )
    record_job_event(session, job_id, "job.started")
    return attempt


def renew_lease(session: Session, job_id: str, *, attempt: int, lease_s: float) -> bool:
    """Extend a running attempt's lease. False: the attempt lost the job (canceled, or requeued
    after its lease lapsed), and its worker must stop and write nothing."""
    outcome = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running.value, Job.attempts == attempt)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    return outcome.rowcount == 1


def requeue_job(session: Session, job_id: str, *, attempt: int) -> None:
    """running → queued for another attempt (a transient failure); the caller publishes it again."""
    _transition(
        session,
        job_id,
        from_status=JobStatus.running,
        to_status=JobStatus.queued,
        attempt=attempt,
        values={"lease_expires_at": None, "enqueued_at": utcnow()},
    )


def requeue_expired_leases(session: Session, *, now: datetime | None = None, limit: int = 500) -> list[str]:
    """running → queued for every job whose lease lapsed (its worker died); returns their ids,
    which the caller publishes again. Each row moves under compare-and-set, so reapers may race."""
    now = now or utcnow()
    expired = session.execute(
        select(Job.id, Job.attempts)
        .where(Job.status == JobStatus.running.value, Job.lease_expires_at < now)
        .limit(limit)
    ).all()
    requeued = []
    for job_id, attempt in expired:
        outcome = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running.value, Job.attempts == attempt)
            .where(Job.lease_expires_at < now)
            .values(status=JobStatus.queued.value, lease_expires_at=None, enqueued_at=now)
        )
        if outcome.rowcount == 1:
            requeued.append(job_id)
    return requeued


def mark_enqueued(session: Session, job_ids: list[str], *, now: datetime | None = None) -> None:
    """Record that these queued jobs' ids were (re)published to the broker."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == JobStatus.queued.value)
            .values(enqueued_at=now or utcnow())
        )


def cancel_job(session: Session, job_id: str) -> JobStatus:
    """queued|running → canceled. A running attempt notices at its next heartbeat (its lease can no
    longer be renewed) and stops at a safe point; any result it produces is then rejected.
    Returns the status the job was canceled from; StaleTransition if it had already ended."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(job_id)
    from_status = JobStatus(job.status)
    if from_status.is_terminal():
        raise StaleTransition(f"job {job_id} is already {from_status.value}")
    _transition(
        session,
        job_id,
        from_status=from_status,
        to_status=JobStatus.canceled,
        attempt=job.attempts,
        values={
            "finished_at": utcnow(),
            "lease_expires_at": None,
            "error": {"code": "canceled", "message": "canceled by request"},
        },
    )
    record_job_event(session, job_id, "job.canceled")
    _count_finished(session, job_id, JobStatus.canceled)
    return from_status


def record_fetched_input(
    session: Session, job_id: str, *, attempt: int, items: list[dict[str, Any]],
    status: JobStatus = JobStatus.running,
) -> None:
    """A running attempt (or the frames worker, on a queued job) fills in ``input.items`` with the
    media it fetched by URL, so later attempts and DELETE see them; guarded like a transition, so a
    stale attempt writes nothing."""
    outcome = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == status.value, Job.attempts == attempt)
        .values(input={"items": items})
    )
    if outcome.rowcount != 1:
        raise StaleTransition(f"job {job_id} is no longer {status.value} at attempt {attempt}")


def record_prepared_frames(
    session: Session, job_id: str, *, prepared: dict[str, Any], items: list[dict[str, Any]]
) -> None:
    """A queued video job gets its sampled frames (and its video's description in ``input``) once;
    a canceled, deleted or already prepared job is left alone (StaleTransition)."""
    outcome = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value, Job.prepared.is_(None))
        .values(prepared=prepared, input={"items": items})
    )
    if outcome.rowcount != 1:
        raise StaleTransition(f"job {job_id} is no longer a queued job without frames")


def finish_job(session: Session, job_id: str, *, attempt: int, result: dict[str, Any]) -> None:
    """running → succeeded, storing the result of exactly this attempt."""
    _transition(
        session,
        job_id,
        from_status=JobStatus.running,
        to_status=JobStatus.succeeded,
        attempt=attempt,
        values={"finished_at": utcnow(), "error": None, "lease_expires_at": None},
    )
    session.add(JobResult(job_id=job_id, attempt=attempt, result=result))
    record_job_event(session, job_id, "job.succeeded", result=result)
    _count_finished(session, job_id, JobStatus.succeeded)


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
        values={"finished_at": utcnow(), "error": {"code": code, "message": message}, "lease_expires_at": None},
    )
    record_job_event(session, job_id, "job.failed")
    _count_finished(session, job_id, JobStatus.failed)


def _count_finished(session: Session, job_id: str, outcome: JobStatus) -> None:
    """Counted by the process whose transition ended the job: exactly once per job, since only one
    compare-and-set can win (a rolled-back transaction may overcount by one; it never undercounts)."""
    job = session.get(Job, job_id)
    record.job_finished(job.task, job.model, outcome.value)
