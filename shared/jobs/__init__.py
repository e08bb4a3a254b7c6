"""THE job state machine: the only code that writes a job's status."""

from shared.jobs.errors import JobError, JobNotFound, StaleTransition
from shared.jobs.states import JobStatus, JobTask
from shared.jobs.transitions import fail_job, finish_job, start_job

__all__ = [
    "JobError",
    "JobNotFound",
    "JobStatus",
    "JobTask",
    "StaleTransition",
    "fail_job",
    "finish_job",
    "start_job",
]
