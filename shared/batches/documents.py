"""OpenAI's batch object from a batch row: one mapping for the API's responses and the batch webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import Batch, Job
from shared.jobs.states import JobStatus

TIMESTAMPS = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
              "expired_at", "cancelling_at", "cancelled_at")


def job_counts(session: Session, batch_id: str) -> dict[str, int]:
    """The batch's jobs by status (one indexed GROUP BY)."""
    rows = session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    ).all()
    return {status: count for status, count in rows}


def request_counts(batch: Batch, counts: dict[str, int]) -> dict[str, int]:
    """OpenAI's ``request_counts``: succeeded jobs are completed; failed and canceled jobs and the
    lines that never became jobs are failed."""
    failed = counts.get(JobStatus.failed.value, 0) + counts.get(JobStatus.canceled.value, 0) + batch.lines_invalid
    return {"total": batch.lines_total, "completed": counts.get(JobStatus.succeeded.value, 0), "failed": failed}


def _unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def batch_object(batch: Batch, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id, "completion_window": batch.completion_window,
        "status": batch.status, "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        **{name: _unix(getattr(batch, name)) for name in TIMESTAMPS},
        "request_counts": request_counts(batch, counts),
        "metadata": batch.metadata_,
    }


def batch_document(session: Session, batch: Batch) -> dict[str, Any]:
    return batch_object(batch, job_counts(session, batch.id))
