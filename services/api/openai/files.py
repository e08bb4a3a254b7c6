"""The Files API's files: a batch input streamed to storage (counted on the way, never whole in
memory), their rows, and OpenAI's file object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from services.api.errors import PayloadTooLarge, ValidationFailed
from services.api.openai.pages import newest_first
from services.api.ownership import owned_or_404
from shared.batches.lines import LineCounter
from shared.db.models import StoredFile
from shared.ids import new_id
from shared.media import WriteBlocks
from shared.storage import ObjectStore, file_key

PURPOSES = ("batch",)  # what a client may upload; batch_output files are vlmq's own


def new_file_id() -> str:
    """OpenAI's spelling (``file-…``), sorting by creation time like every vlmq id."""
    return new_id("file").replace("file_", "file-", 1)


@dataclass
class UploadedFile:
    id: str
    filename: str
    object_key: str
    size_bytes: int
    line_count: int


class JsonlSink:
    """One uploaded file part, written to its key as it arrives; refused past the size or line cap."""

    def __init__(self, store: ObjectStore, *, tenant_id: str, filename: str | None, max_bytes: int,
                 max_lines: int) -> None:
        self.id = new_file_id()
        self._store, self._key = store, file_key(tenant_id, self.id)
        self._filename = (filename or "input.jsonl")[:255]
        self._max_bytes, self._max_lines = max_bytes, max_lines
        self._size, self._lines, self._blocks = 0, LineCounter(), WriteBlocks()
        self._writer = store.open_writer(self._key)

    async def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._max_bytes:
            await self.abort()
            raise PayloadTooLarge(f"files are limited to {self._max_bytes} bytes", code="file_too_large")
        self._lines.feed(chunk)
        if self._lines.lines > self._max_lines:
            await self.abort()
            raise ValidationFailed(f"a batch file holds at most {self._max_lines} requests", code="too_many_lines")
        if (block := self._blocks.add(chunk)) is not None:
            await run_in_threadpool(self._writer.write, block)

    async def finish(self) -> UploadedFile:
        lines = self._lines.finish()
        if lines > self._max_lines:
            await self.abort()
            raise ValidationFailed(f"a batch file holds at most {self._max_lines} requests", code="too_many_lines")
        await run_in_threadpool(self._complete)
        return UploadedFile(self.id, self._filename, self._key, self._size, lines)

    def _complete(self) -> None:
        self._writer.write(self._blocks.take())
        self._writer.complete()

    async def abort(self) -> None:
        self._blocks.take()
        await run_in_threadpool(self._writer.abort)


def file_object(row: StoredFile) -> dict[str, Any]:
    return {
        "id": row.id, "object": "file", "bytes": row.size_bytes, "created_at": int(row.created_at.timestamp()),
        "filename": row.filename, "purpose": row.purpose, "status": "processed", "status_details": None,
        "expires_at": None,
    }


def get_file(session: Session, tenant_id: str, file_id: str) -> StoredFile:
    return owned_or_404(session, StoredFile, file_id, tenant_id, message=f"No such File object: {file_id}",
                        code="file_not_found")


def list_files(session: Session, tenant_id: str, *, limit: int, after: str | None,
               purpose: str | None) -> tuple[list[StoredFile], bool]:
    """Newest first; ``after`` is the id of the last file of the previous page."""
    query = select(StoredFile).where(StoredFile.tenant_id == tenant_id)
    if purpose:
        query = query.where(StoredFile.purpose == purpose)
    return newest_first(session, query, StoredFile.id, limit=limit, after=after)
