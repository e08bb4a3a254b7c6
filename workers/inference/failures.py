"""How a job attempt ends other than with a result: the reason codes users see."""

from __future__ import annotations


class JobFailure(Exception):
    """A permanent failure with a reason code for the user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class TransientFailure(JobFailure):
    """Worth another attempt later (storage unreachable); after the last attempt, a failure."""


class AttemptStopped(Exception):
    """The attempt stopped at a safe point because its lease was lost or its time ran out."""
