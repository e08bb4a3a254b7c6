"""Alembic environment: the URL comes from vlmq's settings unless the caller set one."""

from logging.config import fileConfig

from alembic import context

from shared.config.settings import CommonSettings
from shared.db.engine import get_engine
from shared.db.models import Base, is_mapped_schema_object

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url = config.get_main_option("sqlalchemy.url") or CommonSettings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True,
                      include_object=is_mapped_schema_object)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    with get_engine(url).connect() as connection:
        # Batch mode lets later ALTERs work on SQLite too.
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                          include_object=is_mapped_schema_object)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
