"""Exceptions of the job state machine."""


class JobError(Exception):
    """Base of every job state machine error."""


class JobNotFound(JobError):
    pass


class StaleTransition(JobError):
    """The job was not in the state (or attempt) the caller expected: someone else moved it."""
