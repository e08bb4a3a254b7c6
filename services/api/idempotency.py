"""``Idempotency-Key`` on ``POST /v1/jobs``: the request's fingerprint, the 24 h window, and the
statements ``JobSubmitter`` runs so that one key of one tenant makes exactly one job.

The unique index ``ux_jobs_tenant_id_idempotency_key`` is the arbiter: rows are inserted with
``ON CONFLICT DO NOTHING``, so of two racing requests exactly one row lands (the other insert waits
for the first transaction, then skips) and the loser is answered with the winner's job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from services.api.schemas import InputRef, JobSpec
from shared.db.models import Job, utcnow
from shared.media import StoredMedia

IDEMPOTENCY_WINDOW = timedelta(hours=24)
jobs_table = Job.__table__


@dataclass(frozen=True)
class KeyedRequest:
    """What a request carrying ``Idempotency-Key`` promises: this key always means this body."""

    key: str
    request_sha256: str


@dataclass(frozen=True)
class Replayed:
    """The key was used before with the same body: the answer is that earlier job."""

    job_id: str


def request_sha256(spec: JobSpec, *, refs: list[InputRef], media: list[StoredMedia] | None) -> str:
    """The sha256 of the request's canonical content, the same for both body forms' equal requests.

    The spec is taken after validation, so defaults spelled out or left out, and key order, do not
    change it. Multipart files count by their content (the sha256 the ingest computed on the way
    to storage), JSON inputs by their refs as given.
    """
    content = {
        # Without ``system`` when it is unset, so keys taken before the field existed still match.
        "spec": spec.model_dump(mode="json", exclude={"system"} if spec.system is None else None),
        "input": [ref.model_dump(mode="json", exclude_none=True) for ref in refs],
        "files": [item.sha256 for item in media or []],
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def release_expired_keys(connection: Connection, keys: list[tuple[str, str]]) -> None:
    """Clear ``(tenant, key)`` from rows older than the window, so the key can name a new job."""
    connection.execute(
        update(jobs_table)
        .where(
            tuple_(jobs_table.c.tenant_id, jobs_table.c.idempotency_key).in_(keys),
            jobs_table.c.created_at < utcnow() - IDEMPOTENCY_WINDOW,
        )
        .values(idempotency_key=None)
    )


def insert_jobs_first_key_wins(connection: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Insert job rows; a row whose key a committed (or this batch's) row holds is skipped.
    Returns the ids inserted. Rows without a key (NULL) never conflict."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = (
        dialect_insert(jobs_table)
        .on_conflict_do_nothing(index_elements=[jobs_table.c.tenant_id, jobs_table.c.idempotency_key])
        .returning(jobs_table.c.id)
    )
    return set(connection.scalars(statement, rows))


def jobs_holding_keys(connection: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    """``(tenant, key) → (job id, request sha256)`` of the rows that hold these keys now."""
    rows = connection.execute(
        select(jobs_table.c.tenant_id, jobs_table.c.idempotency_key, jobs_table.c.id, jobs_table.c.request_sha256)
        .where(tuple_(jobs_table.c.tenant_id, jobs_table.c.idempotency_key).in_(keys))
    )
    return {(tenant, key): (job_id, sha256) for tenant, key, job_id, sha256 in rows}


def release_key(connection: Connection, job_id: str) -> None:
    """A job that was never started (the broker was down) gives its key back: the client's retry
    with the same key must create a job, not replay a failure it was told was a 503."""
    connection.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(idempotency_key=None))
