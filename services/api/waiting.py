"""``Prefer: wait=N`` on ``POST /v1/jobs``: read the preference, and hold requests until their job
ends without blocking the event loop. Event streams (``GET /v1/jobs/{id}/events``, streamed chat
completions) read their job's status here too.

One ``JobWaiter`` per API process polls the database for all waiting requests and open streams at
once: a tick is a single indexed query however many clients wait, and none while nobody does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from shared.db.engine import get_engine
from shared.db.models import Job
from shared.jobs.states import TERMINAL_STATUSES

log = logging.getLogger("vlmq.api")

MAX_WAIT_S = 60
POLL_INTERVAL_S = 0.1
_POLL_CHUNK = 500
jobs_table = Job.__table__


def wait_preference(prefer: str | None) -> int:
    """Seconds of ``wait=N`` in a ``Prefer`` header (RFC 7240), at most ``MAX_WAIT_S``; 0 without one.

    As RFC 7240 asks of preferences, a malformed one is ignored rather than refused, a larger wait
    is honoured as far as the server goes (60 s), and only a preference's first occurrence counts.
    """
    for preference in (prefer or "").split(","):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not value.isdigit():
            return 0
        return min(int(value), MAX_WAIT_S)
    return 0


UNSEEN = object()  # ``latest`` before the first tick that read the job


class JobWaiter:
    def __init__(self, *, database_url: str, interval_s: float = POLL_INTERVAL_S) -> None:
        self._database_url, self._interval_s = database_url, interval_s
        self._waiting: dict[str, list[asyncio.Future]] = {}
        self._watched: dict[str, int] = {}  # job id → open streams reading it
        self._latest: dict[str, tuple[str, datetime | None] | None] = {}
        self._someone_waits = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll_forever(), name="vlmq-job-waiter")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait(self, job_id: str, timeout_s: float) -> bool:
        """True once the job is terminal (or gone), False after ``timeout_s``."""
        ended = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, []).append(ended)
        self._someone_waits.set()
        try:
            await asyncio.wait_for(ended, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            futures = self._waiting.get(job_id, [])
            if ended in futures:
                futures.remove(ended)
                if not futures:
                    del self._waiting[job_id]

    @contextmanager
    def watching(self, job_id: str) -> Iterator[None]:
        """While open, every tick reads the job's status for ``latest``."""
        self._watched[job_id] = self._watched.get(job_id, 0) + 1
        self._someone_waits.set()
        try:
            yield
        finally:
            self._watched[job_id] -= 1
            if not self._watched[job_id]:
                del self._watched[job_id]
                self._latest.pop(job_id, None)

    def latest(self, job_id: str):
        """(status, started_at) as of the last tick, None once the job is gone, ``UNSEEN`` before."""
        return self._latest.get(job_id, UNSEEN)

    async def _poll_forever(self) -> None:
        terminal = {status.value for status in TERMINAL_STATUSES}
        while True:
            if not self._waiting and not self._watched:
                self._someone_waits.clear()
                await self._someone_waits.wait()
            await asyncio.sleep(self._interval_s)
            job_ids = list(self._waiting.keys() | self._watched.keys())
            if not job_ids:
                continue
            try:
                observed = await run_in_threadpool(self._statuses_of, job_ids)
            except Exception as error:  # a database hiccup: the waiters time out or the next tick answers
                log.warning("could not poll waited jobs: %s", error)
                continue
            for job_id in job_ids:
                seen = observed.get(job_id)
                if job_id in self._watched:
                    self._latest[job_id] = seen
                if seen is None or seen[0] in terminal:
                    for ended in self._waiting.pop(job_id, []):
                        if not ended.done():
                            ended.set_result(True)

    def _statuses_of(self, job_ids: list[str]) -> dict[str, tuple[str, datetime | None]]:
        """(status, started_at) of each of ``job_ids`` that still exists."""
        found: dict[str, tuple[str, datetime | None]] = {}
        with get_engine(self._database_url).connect() as connection:
            for start in range(0, len(job_ids), _POLL_CHUNK):
                rows = connection.execute(
                    select(jobs_table.c.id, jobs_table.c.status, jobs_table.c.started_at)
                    .where(jobs_table.c.id.in_(job_ids[start : start + _POLL_CHUNK]))
                )
                found.update({row.id: (row.status, row.started_at) for row in rows})
        return found
