"""ORM models. Every row that belongs to a user carries its tenant id."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONType, datetime: UTCDateTime}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """Only the sha256 of a key is stored; keys themselves live in the operator's secret store."""

    __tablename__ = "api_keys"

    key_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Media(Base):
    """What the API learned about a stored object when it accepted it."""

    __tablename__ = "media"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    object_key: Mapped[str] = mapped_column(String(512), primary_key=True)
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column(Float)
    fps: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Upload(Base):
    """A presigned direct-to-storage upload the client has not turned into a job yet."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    object_key: Mapped[str] = mapped_column(String(512))
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # Local storage cannot presign: the API takes the PUT itself, authorised by this token's hash.
    put_token_sha256: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        # The reaper's scan: running jobs by lease expiry, queued jobs by when they were last published.
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
        Index("ix_jobs_status_enqueued_at", "status", "enqueued_at"),
        Index("ux_jobs_tenant_id_idempotency_key", "tenant_id", "idempotency_key", unique=True),
        # The queued-jobs cap (services.api.limits) counts a tenant's queued jobs.
        Index("ix_jobs_tenant_id_status", "tenant_id", "status"),
        # A batch's jobs: one per input line (re-expanding a line inserts nothing), counted by status.
        Index("ux_jobs_batch_id_batch_line", "batch_id", "batch_line", unique=True),
        Index("ix_jobs_batch_id_status", "batch_id", "status"),
    )

    # Ids sort by creation time (see shared.ids), so "newest first" is ORDER BY id DESC.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), index=True)
    task: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    prompt: Mapped[str | None] = mapped_column(Text)
    history: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    options: Mapped[dict[str, Any]]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    input: Mapped[dict[str, Any]]
    webhook: Mapped[dict[str, Any] | None]
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # A running job's lease, renewed by its worker's heartbeat; once it lapses the reaper requeues it.
    lease_expires_at: Mapped[datetime | None]
    # When the job's id was last handed to the broker (the reaper re-publishes lost messages).
    enqueued_at: Mapped[datetime | None]
    # Idempotency-Key of the create request and the sha256 of its body (same key, other body → 409).
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    # A video job's sampled frames, once the frames worker extracted them: where the frame bundle
    # is, which frames, what the video is (workers.frames).
    prepared: Mapped[dict[str, Any] | None]
    # A chat job's system message (OpenAI's system role); None: the checkpoint's own.
    system: Mapped[str | None] = mapped_column(Text)
    # The OpenAI batch and input line (1-based) the job was made from, and the line's custom_id.
    batch_id: Mapped[str | None] = mapped_column(String(40))
    batch_line: Mapped[int | None] = mapped_column(Integer)
    custom_id: Mapped[str | None] = mapped_column(String(512))


class JobResult(Base):
    __tablename__ = "job_results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    result: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookSecret(Base):
    """A tenant's signing secret; after a rotation the previous one stays valid for a while and
    deliveries carry both signatures."""

    __tablename__ = "webhook_secrets"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEndpoint(Base):
    """An endpoint URL a tenant's deliveries go to; a 410 from it disables it."""

    __tablename__ = "webhook_endpoints"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), primary_key=True)
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(255))


class Delivery(Base):
    """One event for one endpoint (the outbox row), written with the job transition that caused it."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_deliveries_leased_until", "leased_until"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the webhook-id, the same on every attempt
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    # Set while an attempt is in flight (until its deadline and a margin): no second attempt starts
    # before, and the tenant's in-flight attempts are counted against its limit.
    leased_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class VideoIndex(Base):
    """A bulk video index: many videos cut into fixed-length segments, one caption each."""

    __tablename__ = "video_indexes"
    __table_args__ = (Index("ix_video_indexes_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(128))
    prompt: Mapped[str | None] = mapped_column(Text)
    segment_s: Mapped[float] = mapped_column(Float)
    frames_per_segment: Mapped[int] = mapped_column(Integer)
    max_new_tokens: Mapped[int] = mapped_column(Integer)
    webhook: Mapped[dict[str, Any] | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    # Progress, moved only by compare-and-set writes (shared.indexes.progress).
    videos_total: Mapped[int] = mapped_column(Integer)
    videos_done: Mapped[int] = mapped_column(Integer, default=0)
    videos_failed: Mapped[int] = mapped_column(Integer, default=0)
    segments_done: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class IndexVideo(Base):
    """One video of an index: where it is, how far it got, why it failed."""

    __tablename__ = "index_videos"
    __table_args__ = (
        Index("ix_index_videos_index_id_position", "index_id", "position"),
        Index("ix_index_videos_status_lease_expires_at", "status", "lease_expires_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    index_id: Mapped[str] = mapped_column(ForeignKey("video_indexes.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer)
    external_id: Mapped[str] = mapped_column(String(512))
    source: Mapped[dict[str, Any]]  # the video as given: {"url"} | {"object_key"} | {"upload_id"}
    object_key: Mapped[str | None] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed | canceled
    error: Mapped[dict[str, Any] | None]
    duration_s: Mapped[float | None] = mapped_column(Float)
    segments_total: Mapped[int | None] = mapped_column(Integer)
    segments_done: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The frames worker's lease while it cuts the video; the reaper requeues a lapsed one.
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


# PostgreSQL only (migration 0006): index_segments.text_search, a stored tsvector of the text, and
# its GIN index. Ranking reads the stored vector instead of parsing every matching text again. Not
# mapped here (SQLite has no such column; it searches an FTS5 table), so schema comparisons skip them.
POSTGRESQL_SEARCH_OBJECTS = frozenset({"text_search", "ix_index_segments_text_search"})


def is_mapped_schema_object(_object, name, _type, _reflected, _compare_to) -> bool:
    """Alembic's include_object: False for the PostgreSQL-only search column and index."""
    return name not in POSTGRESQL_SEARCH_OBJECTS


class IndexSegment(Base):
    """A stretch of one video and its caption. Full-text search: a GIN index over the text's
    tsvector on PostgreSQL, an FTS5 table kept by triggers on SQLite (migration 0005)."""

    __tablename__ = "index_segments"
    __table_args__ = (
        Index("ux_index_segments_video_id_seq", "video_id", "seq", unique=True),
        Index("ix_index_segments_index_id_position_seq", "index_id", "position", "seq"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    index_id: Mapped[str] = mapped_column(ForeignKey("video_indexes.id", ondelete="CASCADE"))
    video_id: Mapped[str] = mapped_column(ForeignKey("index_videos.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # the video's place in the index, for time order
    external_id: Mapped[str] = mapped_column(String(512))
    seq: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    frames: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    text: Mapped[str | None] = mapped_column(Text)
    thumbnail_key: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StoredFile(Base):
    """A file of the OpenAI-compatible Files API: a batch's input, output or error JSONL."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(32))  # batch | batch_output
    filename: Mapped[str] = mapped_column(String(255))
    object_key: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    line_count: Mapped[int] = mapped_column(Integer)  # lines that are not blank
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Batch(Base):
    """An OpenAI-compatible batch: every line of its input file becomes one chat job.

    Status and timestamps move only by compare-and-set writes (``shared.batches``)."""

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_tenant_id_id", "tenant_id", "id"),
        Index("ix_batches_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    input_file_id: Mapped[str] = mapped_column(String(40))
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    webhook: Mapped[dict[str, Any] | None]  # {"url", "events"}: where the batch's end is delivered
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)  # why the whole batch failed
    lines_total: Mapped[int] = mapped_column(Integer)
    # Expansion: input lines read so far (committed with their jobs), lines refused, whether done,
    # and the lease of the frames worker expanding it (the sweeper hands a lapsed one on).
    lines_read: Mapped[int] = mapped_column(Integer, default=0)
    lines_invalid: Mapped[int] = mapped_column(Integer, default=0)
    expanded: Mapped[bool] = mapped_column(Boolean, default=False)
    expand_lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    in_progress_at: Mapped[datetime | None]
    finalizing_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    cancelling_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]


class BatchLineError(Base):
    """An input line that could not become a job: it goes to the batch's error file."""

    __tablename__ = "batch_line_errors"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str | None] = mapped_column(String(512))
    code: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
