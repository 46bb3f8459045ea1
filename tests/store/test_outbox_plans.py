"""The dispatcher's batch statements look the batch's launches up by primary key.

Each names the batch's ids in one bound value (`json_each(?)` on SQLite, `= ANY(?)` on
PostgreSQL) next to a status check, which `outbox` writes so that no status-leading
index (`ix_launches_due`, `ix_launches_status_created`) can serve it. On PostgreSQL the
bare check made the planner walk `ix_launches_status_created` (few launches are
`sending`, say the statistics) through the dead entries of every batch before. These
tests read the plans on a database with statistics (ANALYZE) in which most launches
are settled and a few are in flight.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from automation.store import outbox
from automation.store.database import make_engine, make_session_factory
from automation.store.fastsql import CompiledStatement
from automation.store.states import LaunchStatus
from tests.launches import add_launches

FENCED = ["_CLAIM_IN_CALL", "_MARK_IN_CALL", "_SETTLE", "_SETTLE_WITH_ERROR", "_RELEASE"]
FENCED += ["_RELEASE_UNTIL", "_RETRY_LATER", "_MARK_SENDING"]
NOW = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
VALUES = {"ids": [1, 2, 3], "by": "d1", "token": "0123456789abcdef", "call": 1, "now_": NOW}
VALUES |= {"due": NOW, "new_status": LaunchStatus.SENT, "why": "x", "error_": "x"}


@pytest.fixture
def engine_with_history(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    add_launches(make_session_factory(engine), 3000)
    with engine.begin() as connection:  # a day's history: few launches in flight
        connection.exec_driver_sql("UPDATE launches SET status = 'sent' WHERE id > 20")
        connection.exec_driver_sql("UPDATE launches SET status = 'sending' WHERE id <= 10")
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql("ANALYZE launches")
    yield engine
    engine.dispose()


def plan(engine: Engine, statement: CompiledStatement) -> list[str]:
    with engine.connect() as connection:
        compiled = statement._compiled(connection.dialect)
        known = {name for name, _, _ in compiled.binds}
        values = compiled.bind({k: v for k, v in VALUES.items() if k in known})
        cursor = connection.connection.cursor()
        explain = "EXPLAIN QUERY PLAN" if connection.dialect.name == "sqlite" else "EXPLAIN"
        rows = cursor.execute(f"{explain} {compiled.sql}", values).fetchall()
        connection.rollback()
    return [str(row[-1]) for row in rows]


def test_the_batch_statements_find_their_launches_by_primary_key(
    engine_with_history: Engine,
) -> None:
    sqlite = engine_with_history.dialect.name == "sqlite"
    by_key = "USING INTEGER PRIMARY KEY" if sqlite else "Index Scan using pk_launches"
    for name in FENCED:
        steps = plan(engine_with_history, getattr(outbox, name))
        assert any(by_key in step for step in steps), (name, steps)
        assert not any("ix_launches" in step for step in steps), (name, steps)
