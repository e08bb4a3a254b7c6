"""Per-tenant limits on creating work: a rate over a sliding minute and a cap on queued jobs (429).

The rate is counted by the ``limits`` library in the broker's Redis when the broker is Redis, so all
API processes and replicas spend one budget per tenant; with the embedded file broker it is counted
in each API process's memory.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from services.api.errors import TooManyRequests
from services.api.idempotency import IDEMPOTENCY_WINDOW, jobs_table
from shared.config.settings import ApiSettings
from shared.db.engine import get_engine
from shared.db.models import utcnow
from shared.jobs import JobStatus
from shared.queue.app import redis_url_of, resolve_broker_url

log = logging.getLogger("vlmq.api")

# A queue drains at the workers' pace, not on a clock: a tenant refused for a full queue is told to
# come back after this long.
QUEUED_RETRY_AFTER_S = 5
# The limiter shares the broker's Redis. One that does not answer within this time lets the request
# through rather than holding it: the limits protect capacity, and the job's own enqueue reports a
# broker that is down.
REDIS_TIMEOUT_S = 0.5
KEY_PREFIX = "vlmq-limits"
# How stale the queued-jobs count may be: within it, admitted jobs are added to the last count.
QUEUED_COUNT_TTL_S = 1.0


@dataclass(frozen=True)
class Limits:
    jobs_per_minute: int  # 0: unlimited
    max_queued_jobs: int  # 0: unlimited


def limits_storage_url(broker_url: str) -> str:
    """The broker's Redis (as an asyncio storage of ``limits``), else this process's memory."""
    if redis_url_of(broker_url):
        return f"async+{broker_url}"
    return "async+memory://"


class TenantLimiter:
    """Decides, before a job or an index is created, whether the tenant may create it now."""

    def __init__(self, *, defaults: Limits, overrides: dict[str, Limits], storage_url: str, database_url: str) -> None:
        self._defaults, self._overrides, self._database_url = defaults, overrides, database_url
        options = {}
        if storage_url.startswith("async+redis"):
            options = {"implementation": "redispy", "socket_timeout": REDIS_TIMEOUT_S,
                       "socket_connect_timeout": REDIS_TIMEOUT_S}
        storage = storage_from_string(storage_url, key_prefix=KEY_PREFIX, wrap_exceptions=True, **options)
        # Sliding window counter: a tenant may spend its whole minute at once (a burst), but not twice
        # around a window boundary as with a fixed window; and unlike the moving window (one stored
        # entry per job) it keeps two counters per tenant, whatever the tenant's limit.
        self._rate = SlidingWindowCounterRateLimiter(storage)
        self._items: dict[int, RateLimitItem] = {}
        self._queued_counts: dict[str, tuple[int, float]] = {}  # tenant → (queued jobs, counted at)

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> TenantLimiter:
        defaults = Limits(settings.jobs_per_minute, settings.max_queued_jobs)
        overrides = {
            tenant: Limits(
                defaults.jobs_per_minute if override.jobs_per_minute is None else override.jobs_per_minute,
                defaults.max_queued_jobs if override.max_queued_jobs is None else override.max_queued_jobs,
            )
            for tenant, override in settings.tenant_limits.items()
        }
        storage_url = limits_storage_url(resolve_broker_url(settings))
        if storage_url == "async+memory://" and settings.api_workers > 1:
            log.warning("job rates are counted per API process (%d of them): the broker is not Redis",
                        settings.api_workers)
        return cls(defaults=defaults, overrides=overrides, storage_url=storage_url,
                   database_url=settings.resolved_database_url)

    def limits_for(self, tenant_id: str) -> Limits:
        return self._overrides.get(tenant_id, self._defaults)

    async def admit_job(self, *, tenant_id: str, idempotency_key: str | None) -> None:
        """Raise ``TooManyRequests`` (429) if the tenant may not create a job now. A request whose
        Idempotency-Key already names a job creates nothing (it is a replay or a 409), so it passes."""
        if idempotency_key is not None and await run_in_threadpool(
            _key_names_a_job, self._database_url, tenant_id, idempotency_key
        ):
            return
        limits = self.limits_for(tenant_id)
        await self._spend_rate(tenant_id, limits)
        if limits.max_queued_jobs:
            queued = await self._queued(tenant_id, limits.max_queued_jobs)
            if queued >= limits.max_queued_jobs:
                raise TooManyRequests(
                    f"{queued} of your jobs are queued, the most allowed; retry when some have started",
                    code="too_many_queued_jobs", retry_after_s=QUEUED_RETRY_AFTER_S,
                    details={"max_queued_jobs": limits.max_queued_jobs, "queued": queued},
                )

    async def _queued(self, tenant_id: str, cap: int) -> int:
        """The tenant's queued jobs, counted at most once per ``QUEUED_COUNT_TTL_S`` and kept current
        in between by the jobs admitted since: a burst of submissions costs one count, not one each.
        Counted, not reserved: the cap can be overshot by what other API processes admit meanwhile."""
        now = time.monotonic()
        known = self._queued_counts.get(tenant_id)
        if known is None or now - known[1] > QUEUED_COUNT_TTL_S:
            known = (await run_in_threadpool(_queued_jobs, self._database_url, tenant_id, cap), now)
        queued, counted_at = known
        self._queued_counts[tenant_id] = (queued + (queued < cap), counted_at)  # + this job, if admitted
        return queued

    async def admit_index(self, *, tenant_id: str) -> None:
        """A video index is one creation of the tenant's rate; its videos are not jobs in the queue."""
        await self._spend_rate(tenant_id, self.limits_for(tenant_id))

    async def _spend_rate(self, tenant_id: str, limits: Limits) -> None:
        if not limits.jobs_per_minute:
            return
        item = self._items.get(limits.jobs_per_minute)
        if item is None:
            item = self._items[limits.jobs_per_minute] = RateLimitItemPerMinute(limits.jobs_per_minute)
        try:
            if await self._rate.hit(item, "jobs", tenant_id):
                return
            reset_at = (await self._rate.get_window_stats(item, "jobs", tenant_id)).reset_time
        except StorageError as error:
            log.warning("rate limit storage unavailable, request let through: %s", error)
            return
        retry_after_s = max(1, math.ceil(reset_at - time.time()))
        raise TooManyRequests(
            f"more than {limits.jobs_per_minute} creations per minute; retry in {retry_after_s} s",
            retry_after_s=retry_after_s,
            details={"limit": limits.jobs_per_minute, "retry_after_s": retry_after_s},
        )


def _key_names_a_job(database_url: str, tenant_id: str, idempotency_key: str) -> bool:
    """Whether a job created in the idempotency window holds this tenant's key."""
    with get_engine(database_url).connect() as connection:
        return connection.scalar(
            select(jobs_table.c.id).where(
                jobs_table.c.tenant_id == tenant_id,
                jobs_table.c.idempotency_key == idempotency_key,
                jobs_table.c.created_at >= utcnow() - IDEMPOTENCY_WINDOW,
            ).limit(1)
        ) is not None


def _queued_jobs(database_url: str, tenant_id: str, at_most: int) -> int:
    """The tenant's queued jobs, counted up to ``at_most``: past the cap the exact number does not
    matter, and the count stays bounded however many are queued."""
    queued = (
        select(jobs_table.c.id)
        .where(jobs_table.c.tenant_id == tenant_id, jobs_table.c.status == JobStatus.queued.value)
        .limit(at_most)
        .subquery()
    )
    with get_engine(database_url).connect() as connection:
        return connection.scalar(select(func.count()).select_from(queued))
