"""Webhook events: the outbox rows written with job transitions, their signing and retry schedule.

``services/notifier`` sends them; ``shared/jobs`` records them in the same transaction as the
status change that caused them, so an event is never lost nor sent for a change that rolled back.
"""

from shared.webhooks.events import DEFAULT_EVENTS, JOB_EVENT_TYPES, record_job_event
from shared.webhooks.schedule import RETRY_SCHEDULE_S, delay_before_attempt, is_retryable
from shared.webhooks.signing import new_secret, rotate_secret, secret_for, signature_header, signing_secrets

__all__ = [
    "DEFAULT_EVENTS",
    "JOB_EVENT_TYPES",
    "RETRY_SCHEDULE_S",
    "delay_before_attempt",
    "is_retryable",
    "new_secret",
    "record_job_event",
    "rotate_secret",
    "secret_for",
    "signature_header",
    "signing_secrets",
]
