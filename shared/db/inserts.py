"""INSERT … ON CONFLICT DO NOTHING in the connection's dialect: rows several processes may write at
once (content-addressed media, tenants synced by every API process as it starts)."""

from __future__ import annotations

from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert


def insert_ignoring_duplicates(connection: Connection, table: Table):
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    return dialect_insert(table).on_conflict_do_nothing()
