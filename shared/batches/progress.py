"""THE batch state machine: every status change of a batch, as compare-and-set UPDATEs.

    validating ─▶ in_progress ─▶ finalizing ─▶ completed
         │             │
         ├─────────────┴──▶ cancelling ─▶ cancelled      (POST /v1/batches/{id}/cancel)
         ├─────────────┴──▶ expired                       (its completion window ran out)
         └──▶ failed                                      (no line of the input could run)

A batch is validating while the frames worker reads its input file and turns lines into jobs, and
in_progress from the first committed lines on. Its jobs move by ``shared.jobs`` alone; a batch only
counts them. Several frames workers may sweep at once: each change is one conditional UPDATE, so
exactly one of two racing writers wins it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db.models import Batch, Job, utcnow
from shared.jobs import JobStatus
from shared.webhooks.events import record_batch_event

VALIDATING, IN_PROGRESS, FINALIZING, COMPLETED = "validating", "in_progress", "finalizing", "completed"
FAILED, EXPIRED, CANCELLING, CANCELLED = "failed", "expired", "cancelling", "cancelled"
ACTIVE = (VALIDATING, IN_PROGRESS)  # still taking lines and running jobs
FINAL = (COMPLETED, FAILED, EXPIRED, CANCELLED)
OPEN_JOB_STATUSES = (JobStatus.queued.value, JobStatus.running.value)


class BatchNotCancellable(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(f"a batch that is {status} cannot be cancelled")
        self.status = status


def _move(session: Session, batch_id: str, from_statuses: tuple[str, ...], **values) -> bool:
    moved = session.execute(
        update(Batch).where(Batch.id == batch_id, Batch.status.in_(from_statuses)).values(**values)
    ).rowcount
    return moved == 1


def claim_expansion(session: Session, batch_id: str, *, lease_s: float) -> Batch | None:
    """The expansion lease of an active batch with lines left, if nobody holds it; None otherwise."""
    now = utcnow()
    claimed = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(ACTIVE), Batch.expanded.is_(False),
               (Batch.expand_lease_expires_at.is_(None)) | (Batch.expand_lease_expires_at < now))
        .values(expand_lease_expires_at=now + timedelta(seconds=lease_s))
    ).rowcount
    return session.get(Batch, batch_id, populate_existing=True) if claimed == 1 else None


def record_lines(session: Session, batch_id: str, *, read_before: int, lines_read: int, invalid: int,
                 lease_s: float) -> bool:
    """Lines after ``read_before`` up to ``lines_read`` became jobs or line errors, in the caller's
    transaction; False (the caller rolls back) when the batch stopped taking lines meanwhile
    (cancelled, expired) or another expander recorded these lines first."""
    now = utcnow()
    recorded = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status.in_(ACTIVE), Batch.expired_at.is_(None),
               Batch.lines_read == read_before)
        .values(lines_read=lines_read, lines_invalid=Batch.lines_invalid + invalid,
                expand_lease_expires_at=now + timedelta(seconds=lease_s))
    ).rowcount
    if recorded == 1:
        _move(session, batch_id, (VALIDATING,), status=IN_PROGRESS, in_progress_at=now)
    return recorded == 1


def pause_expansion(session: Session, batch_id: str, *, resume_after_s: float) -> None:
    """Let the lease run out soon, so a sweep hands the expansion on once the queue has drained."""
    session.execute(update(Batch).where(Batch.id == batch_id).values(
        expand_lease_expires_at=utcnow() + timedelta(seconds=resume_after_s)))


def finish_expansion(session: Session, batch_id: str) -> None:
    now = utcnow()
    session.execute(update(Batch).where(Batch.id == batch_id).values(expanded=True, expand_lease_expires_at=None))
    _move(session, batch_id, (VALIDATING,), status=IN_PROGRESS, in_progress_at=now)


def request_cancel(session: Session, batch: Batch) -> Batch:
    """validating|in_progress → cancelling (the frames worker cancels its jobs and writes its files);
    a batch already cancelling or cancelled is returned as it is."""
    if batch.status in (CANCELLING, CANCELLED):
        return batch
    if not _move(session, batch.id, ACTIVE, status=CANCELLING, cancelling_at=utcnow()):
        current = session.get(Batch, batch.id, populate_existing=True)
        if current.status not in (CANCELLING, CANCELLED):
            raise BatchNotCancellable(current.status)
    return session.get(Batch, batch.id, populate_existing=True)


def mark_expired(session: Session, batch_id: str, *, now: datetime | None = None) -> bool:
    """The window ran out: no more lines are taken; the batch ends ``expired`` once its open jobs
    are cancelled and its files written."""
    now = now or utcnow()
    marked = session.execute(
        update(Batch).where(Batch.id == batch_id, Batch.status.in_(ACTIVE), Batch.expired_at.is_(None),
                            Batch.expires_at < now).values(expired_at=now)
    ).rowcount
    return marked == 1


def begin_finalizing(session: Session, batch_id: str) -> bool:
    return _move(session, batch_id, (IN_PROGRESS,), status=FINALIZING, finalizing_at=utcnow())


def settle(session: Session, batch_id: str, *, final_status: str, output_file_id: str | None,
           error_file_id: str | None, errors: list[dict] | None = None) -> bool:
    """The last move, once the output and error files are written: to ``final_status``."""
    from_statuses = {COMPLETED: (FINALIZING,), CANCELLED: (CANCELLING,), EXPIRED: ACTIVE,
                     FAILED: ACTIVE + (FINALIZING,)}[final_status]
    stamp = {COMPLETED: "completed_at", CANCELLED: "cancelled_at", EXPIRED: "expired_at", FAILED: "failed_at"}
    values = {"status": final_status, "output_file_id": output_file_id, "error_file_id": error_file_id,
              "expand_lease_expires_at": None, "errors": errors}
    if final_status != EXPIRED:  # expired_at was stamped when the window ran out
        values[stamp[final_status]] = utcnow()
    if not _move(session, batch_id, from_statuses, **values):
        return False
    record_batch_event(session, batch_id, f"batch.{final_status}")  # with the move, in its transaction
    return True


def open_job_ids(session: Session, batch_id: str, *, limit: int) -> list[str]:
    return list(session.scalars(
        select(Job.id).where(Job.batch_id == batch_id, Job.status.in_(OPEN_JOB_STATUSES)).order_by(Job.id).limit(limit)
    ))
