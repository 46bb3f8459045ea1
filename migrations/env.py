"""Alembic environment: the only way the schema changes.

The URL comes from the Alembic config (set by `automation db upgrade` and by tests) or,
for a bare `alembic upgrade head`, from the server's own settings (DATABASE_URL/.env).
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from sqlalchemy import Connection, text

from automation.store.database import make_engine
from automation.store.models import Base, UTCDateTime

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

#: Any number, the same in every process: PostgreSQL's advisory lock key for migrations.
MIGRATION_LOCK_KEY = 7_173_574


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from automation.config import load_settings

    return load_settings().database_url


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Render our UTC timestamp type as a plain DateTime, so revisions need no
    import from the application (the TypeDecorator only converts values)."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_item=_render_item,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=True,
    )


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Fail fast instead of queueing behind live traffic; one migrator at a time.
            connection.execute(text("SET lock_timeout = '5s'"))
            connection.execute(text("SET statement_timeout = '5min'"))
            connection.execute(text(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            connection.commit()
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
