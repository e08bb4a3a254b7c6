"""Rows of the media table. Media are content-addressed, so two writers may record one object at
once: inserts skip a row that exists instead of failing."""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from shared.db.models import Media


def insert_media_ignoring_duplicates(connection: Connection):
    """INSERT … ON CONFLICT DO NOTHING into ``media``, in the connection's dialect."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    return dialect_insert(Media.__table__).on_conflict_do_nothing()
