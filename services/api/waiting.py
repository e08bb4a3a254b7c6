"""``Prefer: wait=N`` on ``POST /v1/jobs``: read the preference, and hold requests until their job
ends without blocking the event loop.

One ``JobWaiter`` per API process polls the database for all waiting requests at once: a tick is a
single indexed query however many clients wait, and none while nobody does.
"""

from __future__ import annotations

import asyncio
import logging

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


class JobWaiter:
    def __init__(self, *, database_url: str, interval_s: float = POLL_INTERVAL_S) -> None:
        self._database_url, self._interval_s = database_url, interval_s
        self._waiting: dict[str, list[asyncio.Future]] = {}
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

    async def _poll_forever(self) -> None:
        while True:
            if not self._waiting:
                self._someone_waits.clear()
                await self._someone_waits.wait()
            await asyncio.sleep(self._interval_s)
            job_ids = list(self._waiting)
            if not job_ids:
                continue
            try:
                settled = await run_in_threadpool(self._settled_among, job_ids)
            except Exception as error:  # a database hiccup: the waiters time out or the next tick answers
                log.warning("could not poll waited jobs: %s", error)
                continue
            for job_id in settled:
                for ended in self._waiting.pop(job_id, []):
                    if not ended.done():
                        ended.set_result(True)

    def _settled_among(self, job_ids: list[str]) -> set[str]:
        """The ids among ``job_ids`` whose jobs are terminal or no longer exist."""
        unfinished: set[str] = set()
        with get_engine(self._database_url).connect() as connection:
            for start in range(0, len(job_ids), _POLL_CHUNK):
                chunk = job_ids[start : start + _POLL_CHUNK]
                unfinished.update(
                    connection.scalars(
                        select(jobs_table.c.id).where(
                            jobs_table.c.id.in_(chunk),
                            jobs_table.c.status.not_in([status.value for status in TERMINAL_STATUSES]),
                        )
                    )
                )
        return set(job_ids) - unfinished
