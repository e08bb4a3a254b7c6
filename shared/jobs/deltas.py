"""The text of a ``stream: true`` job as it is generated: a Redis stream per job, written by the
inference worker, read by the API's ``GET /v1/jobs/{id}/events``.

A stream rather than pub/sub: a client that connects after generation began still reads every
delta from the first, so the deltas it gets always add up to the final ``result.text``. Each entry
carries its attempt: a job handed back or retried starts its text over in a new attempt.
"""

from __future__ import annotations

import logging
import re
import time

import redis

log = logging.getLogger("vlmq.worker")

# Long enough for any client to read a job's deltas; the final text is in the job's result anyway.
DELTAS_TTL_S = 3600
MAX_ENTRIES = 20_000
_UNSETTLED_TAIL = re.compile(r"[\s\ufffd]+$")


def deltas_key(job_id: str) -> str:
    return f"vlmq:job-deltas:{job_id}"


class DeltaWriter:
    """Sends the new text of one attempt as it grows: ``offer`` the text generated so far, and
    only what extends what was already sent goes out (at most every ``interval_s``)."""

    def __init__(self, client: redis.Redis, job_id: str, attempt: int, *, interval_s: float = 0.05):
        self.client, self.key, self.attempt, self.interval_s = client, deltas_key(job_id), attempt, interval_s
        self.sent, self._last = "", 0.0

    def offer(self, text: str, *, final: bool = False) -> None:
        if not final:
            if time.monotonic() - self._last < self.interval_s:
                return
            # Held back: trailing spaces (the final text is stripped) and what may be a character
            # still half-decoded (it may also stay a replacement character: the final text says).
            text = _UNSETTLED_TAIL.sub("", text)
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return
        try:
            with self.client.pipeline(transaction=False) as pipeline:
                pipeline.xadd(self.key, {"text": text[len(self.sent):], "attempt": self.attempt},
                              maxlen=MAX_ENTRIES, approximate=True)
                pipeline.expire(self.key, DELTAS_TTL_S)
                pipeline.execute()
        except redis.RedisError as error:  # not sent: the next offer carries this text too
            log.warning("could not stream text of %s: %s", self.key, error)
            return
        self.sent, self._last = text, time.monotonic()
