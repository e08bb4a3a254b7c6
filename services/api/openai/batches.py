"""OpenAI's batch object and the API's reads and writes of batches (the frames worker does the rest:
``workers.frames.batches``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.api.errors import Conflict, ValidationFailed
from services.api.openai.files import get_file
from services.api.openai.pages import newest_first
from services.api.ownership import owned_or_404
from services.api.schemas import RequestBody
from shared.batches.progress import VALIDATING
from shared.db.models import Batch, utcnow
from shared.ids import new_id
from shared.webhooks.events import BATCH_EVENT_TYPES

ENDPOINTS = ("/v1/chat/completions",)
COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}


class BatchWebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    events: list[Literal[BATCH_EVENT_TYPES]] = Field(default_factory=lambda: list(BATCH_EVENT_TYPES))  # type: ignore[valid-type]


class BatchCreate(RequestBody):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=40)
    endpoint: Literal["/v1/chat/completions"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    webhook: BatchWebhookSpec | None = Field(
        default=None, description="A vlmq extension (the openai client sends it as extra_body): where a signed "
        "batch.completed | batch.failed | batch.cancelled | batch.expired event goes, with the batch object.")

    @field_validator("metadata")
    @classmethod
    def _short_values(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, item in (value or {}).items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return value


class BatchNotCancellableError(Conflict):
    code = "batch_not_cancellable"
    headers = {"x-should-retry": "false"}  # noqa: RUF012  (the openai client would retry a 409 otherwise)


def create_batch(session: Session, tenant_id: str, body: BatchCreate) -> Batch:
    source = get_file(session, tenant_id, body.input_file_id)
    if source.purpose != "batch":
        raise ValidationFailed(f"file {source.id} has purpose {source.purpose}, not batch", code="invalid_file",
                               details={"errors": [{"loc": ["input_file_id"], "message": "not a batch file"}]})
    if source.line_count == 0:
        raise ValidationFailed(f"file {source.id} holds no requests", code="empty_file",
                               details={"errors": [{"loc": ["input_file_id"], "message": "empty file"}]})
    now = utcnow()
    batch = Batch(
        id=new_id("batch"), tenant_id=tenant_id, status=VALIDATING, endpoint=body.endpoint,
        completion_window=body.completion_window, input_file_id=source.id, metadata_=body.metadata,
        webhook=body.webhook.model_dump(mode="json") if body.webhook else None,
        lines_total=source.line_count, lines_read=0, lines_invalid=0, expanded=False, created_at=now,
        expires_at=now + COMPLETION_WINDOWS[body.completion_window],
    )
    session.add(batch)
    session.flush()
    return batch


def get_batch(session: Session, tenant_id: str, batch_id: str) -> Batch:
    return owned_or_404(session, Batch, batch_id, tenant_id, message=f"No such Batch object: {batch_id}",
                        code="batch_not_found")


def list_batches(session: Session, tenant_id: str, *, limit: int, after: str | None) -> tuple[list[Batch], bool]:
    return newest_first(session, select(Batch).where(Batch.tenant_id == tenant_id), Batch.id, limit=limit, after=after)
