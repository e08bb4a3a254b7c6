"""Rows of the media table. Media are content-addressed, so two writers may record one object at
once: inserts skip a row that exists instead of failing."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from shared.db.inserts import insert_ignoring_duplicates
from shared.db.models import Media, utcnow
from shared.media import StoredMedia


def insert_media_ignoring_duplicates(connection: Connection):
    """INSERT … ON CONFLICT DO NOTHING into ``media``, in the connection's dialect."""
    return insert_ignoring_duplicates(connection, Media.__table__)


def media_rows(tenant_id: str, media: Iterable[StoredMedia], *, now: datetime | None = None) -> list[dict[str, Any]]:
    """The media table's rows for these stored files of a tenant."""
    now = now or utcnow()
    return [{"tenant_id": tenant_id, "created_at": now, **item.as_media_row()} for item in media]


def record_media(connection: Connection, tenant_id: str, media: list[StoredMedia]) -> None:
    """Record files a worker stored (fetched by URL); a file recorded before stays as it is."""
    if media:
        connection.execute(insert_media_ignoring_duplicates(connection), media_rows(tenant_id, media))
