"""Start what a benchmark needs on loopback: PostgreSQL database, Redis, an S3 server, the API."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from tests.support.services import (
    AWS_ENV,
    REPO_ROOT,
    Stack,
    create_database,
    drop_database,
    fresh_redis_url,
    migrate,
    s3_server,
)

API_KEY = "bench-key-0123456789"


@contextmanager
def s3_storage(bucket: str = "vlmq-bench"):
    """A moto S3 server; yields the storage URL that points vlmq at it."""
    with s3_server(bucket) as endpoint:
        yield f"s3://{bucket}?endpoint_url={endpoint}"


@contextmanager
def api_stack(data_dir: Path, *, storage_url: str | None = None, postgres: bool = True, extra: dict | None = None):
    """The API alone (no worker): jobs stay queued, which is what submission benchmarks want."""
    data_dir.mkdir(parents=True, exist_ok=True)
    database = create_database() if postgres else None
    database_url = database[1] if database else f"sqlite:///{data_dir / 'vlmq.db'}"
    migrate(database_url)
    env = {key: value for key, value in os.environ.items() if not key.startswith("VLMQ_")}
    env.update(AWS_ENV)
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "VLMQ_DATABASE_URL": database_url,
            "VLMQ_BROKER_URL": fresh_redis_url(db=10),
            "VLMQ_API_KEYS": f"bench:{API_KEY}",
            "VLMQ_JOBS_PER_MINUTE": "0",  # throughput, not the tenant limits, is measured
            **({"VLMQ_STORAGE_URL": storage_url} if storage_url else {}),
            **(extra or {}),
        }
    )
    stack = Stack.start(env, data_dir, with_worker=False)
    try:
        yield stack
    finally:
        stack.stop()
        if database:
            drop_database(database[0])


class PeakSampler(threading.Thread):
    """Calls ``measure`` every ``interval_s`` until stopped; ``stop`` returns the highest value seen
    (a process's RSS during a burst, measured against its idle value)."""

    def __init__(self, measure: Callable[[], int], *, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.measure, self.interval_s = measure, interval_s
        self.peak, self._stopped = measure(), threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.peak = max(self.peak, self.measure())

    def stop(self) -> int:
        self._stopped.set()
        self.join()
        return self.peak
