"""API.md's retry schedule: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h (±10 %)."""

from __future__ import annotations

import random

RETRY_SCHEDULE_S = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
JITTER = 0.1


def delay_before_attempt(attempt: int, *, retry_after_s: float | None = None, rng: random.Random | None = None) -> float | None:
    """Seconds before attempt number ``attempt`` (1-based); None once the schedule is spent.

    A ``Retry-After`` the receiver sent with 429/503 wins when it asks for longer.
    """
    if attempt > len(RETRY_SCHEDULE_S):
        return None
    base = RETRY_SCHEDULE_S[attempt - 1]
    delay = base * (1 + (rng or random).uniform(-JITTER, JITTER))
    return max(delay, retry_after_s or 0.0)


def is_retryable(status_code: int | None) -> bool:
    """Network errors and timeouts (no status), 408, 429, 5xx — and a 3xx, which is never followed
    and counts as a failed attempt."""
    return status_code is None or status_code in (408, 429) or status_code >= 500 or 300 <= status_code < 400
