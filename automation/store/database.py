"""Connecting to the database and keeping its schema at the code's revision.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and the server
brings its schema up to date by itself. PostgreSQL (through psycopg 3) is upgraded only
by an operator (`automation db upgrade`): several hosts may share it, and a web worker
should not run DDL behind their backs.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CursorResult, Engine, Result, Select, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from automation.errors import MissingDriver, NoDatabase, SchemaOutdated


def _migrations_directory() -> Path:
    """Where the Alembic scripts are: `migrations/` beside the package in a checkout
    (and an editable install), `automation/migrations` inside an installed wheel."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "migrations"
    return installed if (installed / "env.py").is_file() else package.parent / "migrations"


MIGRATIONS = _migrations_directory()
#: How long a SQLite writer waits for the lock before giving up, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 5000


def normalise_url(url: str) -> str:
    """`postgresql://…` means psycopg 3 here; we do not ship psycopg2."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, idle_in_transaction: float | None = None, **kwargs: Any) -> Engine:
    """Create an engine with the connection settings the server relies on.

    `idle_in_transaction` (PostgreSQL): seconds after which the server ends a session
    that sits idle inside a transaction (`Settings.longest_transaction` says why).
    """
    # Statement parameters hold tokens and customers' webhook bodies: keep them out of
    # error messages (and so out of logs and tracebacks).
    kwargs.setdefault("hide_parameters", True)
    url = normalise_url(url)
    if url.startswith("sqlite"):
        connect_args: dict[str, Any] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        database = make_url(url).database
        if database and database != ":memory:":
            connect_args["factory"] = _writer_locked(f"{database}.writer.lock")
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    _require_psycopg()
    if idle_in_transaction is not None:
        milliseconds = round(idle_in_transaction * 1000)
        options = f"-c idle_in_transaction_session_timeout={milliseconds}"
        kwargs["connect_args"] = {"options": options} | kwargs.get("connect_args", {})
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _require_psycopg() -> None:
    """`pip install .` has no PostgreSQL driver (it is the `postgres` extra): say how to
    get it, instead of SQLAlchemy's ModuleNotFoundError deep in a traceback."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise MissingDriver() from exc


_Query = TypeVar("_Query", bound=Select[Any])

#: Which writer locks the current thread holds (by lock file path).
_held = threading.local()


def _writer_locked(lock_path: str) -> type[sqlite3.Connection]:
    """A sqlite3 connection class that queues writers on a file lock.

    SQLite's own busy handler waits for a locked database by sleeping 1, 2, 5, 10 …
    ms and retrying; with several gunicorn workers writing webhooks that sleeping,
    not the work, dominated latency. A blocking `flock` wakes the next writer the
    moment the previous one commits. SQLite's locking still guarantees correctness.
    """

    class WriterLockedConnection(sqlite3.Connection):
        _lock_file: Any = None
        _locked = False

        def acquire_writer_lock(self) -> None:
            if getattr(_held, lock_path, False):
                # A second transaction in a thread that already writes: waiting on the
                # file lock would deadlock; let SQLite's busy timeout report it instead.
                return
            if self._lock_file is None:
                self._lock_file = open(lock_path, "a")  # noqa: SIM115 - lives with the connection
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self._locked = True
            setattr(_held, lock_path, True)

        def release_writer_lock(self) -> None:
            if self._locked:
                self._locked = False
                setattr(_held, lock_path, False)
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

        def commit(self) -> None:
            try:
                super().commit()
            finally:
                self.release_writer_lock()

        def rollback(self) -> None:
            try:
                super().rollback()
            finally:
                self.release_writer_lock()

        def close(self) -> None:
            try:
                super().close()
            finally:
                self.release_writer_lock()
                if self._lock_file is not None:
                    self._lock_file.close()

    return WriterLockedConnection


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, issue BEGIN, so `_sqlite_begin_immediate` works.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    """Take the write lock at BEGIN: a read-then-write transaction that upgrades its
    lock later can fail with "database is locked" instead of waiting its turn.

    Sent on the driver's connection: every webhook begins a transaction, and
    `exec_driver_sql` costs several times the BEGIN itself. A failure is raised as
    SQLAlchemy's error, as `exec_driver_sql` would.
    """
    dbapi_connection = connection.connection.dbapi_connection
    if hasattr(dbapi_connection, "acquire_writer_lock"):
        dbapi_connection.acquire_writer_lock()
    try:
        dbapi_connection.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        if hasattr(dbapi_connection, "release_writer_lock"):
            dbapi_connection.release_writer_lock()
        raise DBAPIError.instance(
            "BEGIN IMMEDIATE", None, exc, sqlite3.Error, dialect=connection.dialect
        ) from exc


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def insert_ignoring(session: Session, model: type[Any]) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_nothing` on SQLite and PostgreSQL."""
    return dialect_insert(session.get_bind().dialect.name)(model)


def dialect_insert(dialect: str) -> Any:
    """`insert` of the PostgreSQL or SQLite dialect, by dialect name."""
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def for_update(session: Session, query: _Query, *, skip_locked: bool = False) -> _Query:
    """Lock the selected rows on PostgreSQL; SQLite needs nothing, since every
    transaction there holds the write lock from BEGIN IMMEDIATE."""
    if session.get_bind().dialect.name != "postgresql":
        return query
    return query.with_for_update(skip_locked=skip_locked)


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE touched (SQLAlchemy types only the cursor result)."""
    return int(cast(CursorResult[Any], result).rowcount)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


# ---------------------------------------------------------------------------- schema


def alembic_config(url: str) -> Config:
    """An Alembic config that works from any working directory."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None, "migrations/ has no revisions"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str, revision: str = "head") -> None:
    """Run the migrations up to `revision` (the only way the schema changes)."""
    with _sqlite_migration_lock(url):
        command.upgrade(alembic_config(url), revision)


def sqlite_path(url: str) -> Path | None:
    """The absolute path of a SQLite file URL, None for PostgreSQL and `:memory:`."""
    url = normalise_url(url)
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database).resolve()


def require_existing(url: str) -> None:
    """Refuse a SQLite file that is not there, instead of creating an empty database.

    Commands run from the wrong directory would otherwise create `automation.db`
    there and report "no launches match": an operator then believes the launches
    are gone.
    """
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise NoDatabase(
            f"no database at {path} (DATABASE_URL={url}); "
            "run from the directory that holds it or set DATABASE_URL"
        )


def ensure_schema(engine: Engine) -> str:
    """Bring SQLite up to date; check PostgreSQL and refuse an old schema.

    Returns the revision the database is at.
    """
    url = engine.url.render_as_string(hide_password=False)
    head = head_revision()
    if is_sqlite(engine):
        if current_revision(engine) != head:
            upgrade(url)
        return head
    return check_schema(engine)


def check_schema(engine: Engine) -> str:
    """Refuse a database whose schema is not the code's, on any backend: what read-only
    commands use, since they must not migrate (or create) anything."""
    head = head_revision()
    current = current_revision(engine)
    if current != head:
        raise SchemaOutdated(
            f"database schema is at revision {current or 'none'}, the code needs {head}: "
            "run `automation db upgrade`"
        )
    return head


@contextmanager
def _sqlite_migration_lock(url: str) -> Iterator[None]:
    """Serialise migrations of one SQLite file across gunicorn workers starting at once."""
    database = make_url(url).database if url.startswith("sqlite") else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
