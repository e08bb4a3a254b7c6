"""THE job state machine: the only code that writes a job's status."""

from shared.jobs.errors import JobError, JobNotFound, StaleTransition
from shared.jobs.states import JobStatus, JobTask
from shared.jobs.transitions import (
    cancel_job,
    fail_job,
    finish_job,
    mark_enqueued,
    record_fetched_input,
    record_prepared_frames,
    renew_lease,
    requeue_expired_leases,
    requeue_job,
    start_job,
)

__all__ = [
    "JobError",
    "JobNotFound",
    "JobStatus",
    "JobTask",
    "StaleTransition",
    "cancel_job",
    "fail_job",
    "finish_job",
    "mark_enqueued",
    "record_fetched_input",
    "record_prepared_frames",
    "renew_lease",
    "requeue_expired_leases",
    "requeue_job",
    "start_job",
]
