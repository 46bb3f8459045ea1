"""The engine's connection settings that the server's guarantees rest on."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from automation.config import Settings
from automation.store.database import make_engine


def test_a_session_stopped_inside_a_transaction_lets_go_of_its_row_locks(
    database_url: str,
) -> None:
    """A dispatcher stopped (SIGSTOP, a VM pause) while it holds the rate limit's row
    lock would stall every other dispatcher until it resumes: PostgreSQL ends its
    session once it has been idle in the transaction for the limit, and the lock with
    it. Here the limit is 1 s; the other connection would give up after 30 s."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no row locks and no server to end a session")
    stalled = make_engine(database_url, idle_in_transaction=1.0)
    other = make_engine(database_url)
    try:
        with other.begin() as connection:
            connection.execute(text("CREATE TABLE held (id int PRIMARY KEY)"))
            connection.execute(text("INSERT INTO held VALUES (1)"))
        frozen = stalled.connect()
        frozen.begin()
        frozen.execute(text("SELECT id FROM held WHERE id = 1 FOR UPDATE"))
        with other.begin() as connection:
            connection.execute(text("SET LOCAL lock_timeout = '30s'"))
            got = connection.execute(text("SELECT id FROM held WHERE id = 1 FOR UPDATE"))
            assert got.scalar_one() == 1
        with pytest.raises(DBAPIError, match="idle-in-transaction"):
            frozen.execute(text("SELECT 1"))
        frozen.invalidate()
    finally:
        stalled.dispose()
        with other.begin() as connection:  # the session's database is shared: leave
            connection.execute(text("DROP TABLE IF EXISTS held"))  # no stray table
        other.dispose()


def test_the_limit_outlasts_the_longest_call_made_inside_a_transaction() -> None:
    """The token refresh keeps its row lock across a call to amoCRM: the limit must
    not end a session that is merely waiting for that answer."""
    settings = Settings(amocrm_timeout="5,60", _env_file=None)  # type: ignore[call-arg]
    assert settings.longest_transaction > 5 + 60
