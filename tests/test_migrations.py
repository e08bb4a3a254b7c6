"""Migrations on a real PostgreSQL: upgrade, downgrade and upgrade again, and no drift from the models."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from shared.db.models import Base, is_mapped_schema_object
from tests.support.services import create_database, drop_database, migrate


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_round_trip_on_postgresql():
    # given an empty database
    name, url = create_database()
    try:
        # when migrated up, down to nothing, and up again
        migrate(url)
        upgraded = table_names(url)
        migrate(url, "base", downgrade=True)
        downgraded = table_names(url)
        migrate(url)

        # then every model table exists after each upgrade and none after the downgrade
        assert set(Base.metadata.tables) <= upgraded
        assert downgraded <= {"alembic_version"}
        assert table_names(url) == upgraded
    finally:
        drop_database(name)


def test_the_models_match_the_migrations(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_object": is_mapped_schema_object})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []


def test_migrations_also_build_an_sqlite_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'vlmq.db'}"
    migrate(url)
    assert set(Base.metadata.tables) <= table_names(url)
    migrate(url, "base", downgrade=True)
    assert table_names(url) <= {"alembic_version"}
