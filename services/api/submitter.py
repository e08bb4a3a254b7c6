"""Group commits for job submission: one thread resolves, writes and enqueues many requests' jobs.

Each request hands its job to the submitter and awaits it. The submitter thread takes every job
waiting, resolves their media refs and inserts their rows in one transaction on one connection, then
rings the broker once per job with one held producer. Under load a batch holds many jobs, so the
commit, the producer checkout and the hand-offs between threads are paid once per batch; when idle a
batch is one job and nothing waits for company. The request's own thread does no database work.

Idempotency keys are settled here too, in the batch's transaction, because only the insert itself
can decide a race between two requests with one new key: rows go in with ``ON CONFLICT DO
NOTHING`` on the tenant's key index (``services.api.idempotency``), so a taken key skips that one
row instead of failing the batch, and its request is answered with the job that holds the key.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy import insert

from services.api.context_budget import PromptBudget
from services.api.errors import (
    ApiError,
    Conflict,
    DatabaseDown,
    DependencyDown,
    IdempotencyKeyReused,
)
from services.api.idempotency import (
    KeyedRequest,
    Replayed,
    insert_jobs_first_key_wins,
    jobs_holding_keys,
    release_expired_keys,
    release_key,
)
from services.api.schemas import InputRef, JobSpec
from services.api.submission import (
    check_media_fits_task,
    job_rows,
    jobs_table,
    known_media,
    object_keys_for,
)
from shared.db.engine import get_engine, session_scope
from shared.db.media_rows import insert_media_ignoring_duplicates
from shared.jobs import JobStatus, StaleTransition, fail_job
from shared.media import PendingUrl, StoredMedia
from shared.metrics import record
from shared.queue import route_for

log = logging.getLogger("vlmq.api")
MAX_BATCH = 64


@dataclass
class Unresolved:
    """Some refs name objects the API has never seen: the caller inspects those and submits again."""

    keys: list[str | None]  # None for a URL
    media: list[StoredMedia | PendingUrl | None]


@dataclass
class Submission:
    tenant_id: str
    spec: JobSpec
    model_id: str
    media: list[StoredMedia | PendingUrl] | None = None  # known media, or None to resolve ``refs``
    refs: list[InputRef] = field(default_factory=list)
    keyed: KeyedRequest | None = None  # the request's Idempotency-Key and body fingerprint
    keys: list[str | None] = field(default_factory=list)  # the refs' storage keys (None: a URL), once resolved
    done: Future = field(default_factory=Future)
    # The prompt's tokens, counted in the request's thread: here only the media's tiles are added.
    budget: PromptBudget | None = None
    rows: tuple[dict[str, Any], list[dict[str, Any]]] | None = None


class JobSubmitter:
    def __init__(self, *, database_url: str, celery: Celery) -> None:
        self._database_url, self._celery = database_url, celery
        self._pending: queue.SimpleQueue[Submission | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="vlmq-submitter", daemon=True)
        self._thread.start()

    def submit(self, submission: Submission) -> Future:
        """A future of the new job's row, a ``Replayed`` (its key named an earlier job with the same
        body), an ``Unresolved``, or an ``ApiError``."""
        self._pending.put(submission)
        return submission.done

    def close(self) -> None:
        self._pending.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._pending.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            try:
                self._process(batch)
            except Exception as error:  # never leave a request waiting forever
                log.exception("job submission batch failed")
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(DependencyDown(f"the job could not be created: {type(error).__name__}"))

    def _process(self, batch: list[Submission]) -> None:
        replays: list[tuple[Submission, Replayed | ApiError]] = []
        try:
            with get_engine(self._database_url).begin() as connection:
                known = self._known_media_of(connection, batch)
                ready = [item for item in batch if self._prepare(item, known)]
                created = self._insert_jobs(connection, ready, replays) if ready else []
                # After the jobs: a request answered with an earlier job records no media of its own.
                media_rows = [row for item in created for row in item.rows[1]]
                if media_rows:
                    connection.execute(insert_media_ignoring_duplicates(connection), media_rows)
        except Exception as error:  # the database refused or is down: none of these jobs exists
            log.error("could not write %d jobs: %s", len(batch), error)
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(DatabaseDown("the database is not reachable; the job was not created"))
            return
        for item in created:
            record.job_created(item.rows[0]["task"], item.rows[0]["model"])
        # Only now: the job a replay names may be a row of this very batch, visible once committed.
        for item, outcome in replays:
            if isinstance(outcome, ApiError):
                item.done.set_exception(outcome)
            else:
                item.done.set_result(outcome)
        if created:
            self._enqueue_all(created)

    def _insert_jobs(
        self, connection, ready: list[Submission], replays: list[tuple[Submission, Replayed | ApiError]]
    ) -> list[Submission]:
        """Insert the ready items' jobs; returns those inserted. An item whose key another row holds
        is not inserted: its answer (that job, or 409 for another body) goes to ``replays``."""
        keys = sorted({(item.tenant_id, item.keyed.key) for item in ready if item.keyed})
        if not keys:  # the common case: one multi-row INSERT, nothing to arbitrate
            connection.execute(insert(jobs_table), [item.rows[0] for item in ready])
            return ready
        release_expired_keys(connection, keys)
        # Keys in one order in every batch: two API processes inserting the same two new keys wait
        # for each other in turn instead of deadlocking.
        in_key_order = sorted(ready, key=lambda item: (item.tenant_id, item.keyed.key) if item.keyed else ("", ""))
        inserted = insert_jobs_first_key_wins(connection, [item.rows[0] for item in in_key_order])
        created = [item for item in ready if item.rows[0]["id"] in inserted]
        skipped = [item for item in ready if item.rows[0]["id"] not in inserted]
        holders = jobs_holding_keys(connection, sorted({(item.tenant_id, item.keyed.key) for item in skipped}))
        for item in skipped:
            holder = holders.get((item.tenant_id, item.keyed.key))
            if holder is None:  # the holder was deleted between the insert and this read
                busy = Conflict("a request with this Idempotency-Key was in flight; retry", code="idempotency_key_busy")
                replays.append((item, busy))
            elif holder[1] == item.keyed.request_sha256:
                replays.append((item, Replayed(holder[0])))
            else:
                replays.append((item, IdempotencyKeyReused(
                    "this Idempotency-Key was used with a different request body in the last 24 hours",
                    details={"job_id": holder[0]},
                )))
        return created

    def _known_media_of(self, connection, batch: list[Submission]) -> dict[tuple[str, str], StoredMedia]:
        """Resolve every item's refs to keys, then learn all known media with one query per tenant."""
        keys_by_tenant: dict[str, set[str]] = {}
        for item in batch:
            if item.media is not None:
                continue
            try:
                item.keys = object_keys_for(connection, item.tenant_id, item.refs)
            except ApiError as error:
                item.done.set_exception(error)
                continue
            keys_by_tenant.setdefault(item.tenant_id, set()).update(key for key in item.keys if key is not None)
        return {
            (tenant, key): media
            for tenant, keys in keys_by_tenant.items()
            for key, media in known_media(connection, tenant, sorted(keys)).items()
        }

    def _prepare(self, item: Submission, known: dict[tuple[str, str], StoredMedia]) -> bool:
        """Build the item's rows; False when it is already answered (an error, or media to inspect)."""
        if item.done.done():
            return False
        media = item.media
        if media is None:
            found = [
                PendingUrl(str(ref.url)) if key is None else known.get((item.tenant_id, key))
                for key, ref in zip(item.keys, item.refs, strict=True)
            ]
            if None in found:
                item.done.set_result(Unresolved(item.keys, found))
                return False
            media = found
        try:
            check_media_fits_task(item.spec, media)
            if item.budget is not None:
                item.budget.check(media)
        except ApiError as error:
            item.done.set_exception(error)
            return False
        item.rows = job_rows(
            tenant_id=item.tenant_id, spec=item.spec, model_id=item.model_id, media=media, keyed=item.keyed
        )
        return True

    def _enqueue_all(self, ready: list[Submission]) -> None:
        try:
            with self._celery.producer_or_acquire() as producer:
                for item in ready:
                    self._enqueue(item, producer)
        except Exception as error:  # no producer at all: the broker is down
            for item in ready:
                if not item.done.done():
                    self._fail(item, error)

    def _enqueue(self, item: Submission, producer) -> None:
        row = item.rows[0]
        try:
            task_name, queue = route_for(row["task"], row["model"], prepared=False)
            self._celery.send_task(task_name, args=[row["id"]], queue=queue, producer=producer, retry=False)
        except Exception as error:  # kombu raises several unrelated types for a broker that is down
            self._fail(item, error)
            return
        item.done.set_result(row)

    def _fail(self, item: Submission, error: Exception) -> None:
        """The row exists but no message does: fail the job visibly instead of leaving it queued."""
        job_id = item.rows[0]["id"]
        log.error("could not enqueue %s: %s", job_id, error)
        try:
            with session_scope(self._database_url) as session:
                fail_job(
                    session, job_id, from_status=JobStatus.queued, attempt=0,
                    code="queue_unavailable", message="the job queue could not be reached",
                )
                if item.keyed:
                    release_key(session.connection(), job_id)
        except StaleTransition:
            pass  # someone else already moved it
        except Exception:  # the 503 below is what the client must see either way
            log.exception("could not mark %s failed", job_id)
        item.done.set_exception(DependencyDown("the job queue is not reachable; the job was not started"))
