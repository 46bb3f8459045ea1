"""The dispatcher's statements on SQLite look the batch's launches up by primary key.

Each names the batch's ids in one bound value (`json_each(?)`) next to a status check,
which `outbox` writes `+status` so that no status-leading index (`ix_launches_due`,
`ix_launches_status_created`) can serve it. These tests read SQLite's plans on a database with
statistics (ANALYZE) in which most launches are settled and few in flight.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from automation.store import outbox
from automation.store.database import make_engine, make_session_factory, upgrade
from automation.store.fastsql import CompiledStatement
from tests.launches import add_launches

FENCED = ["_CLAIM_IN_CALL", "_MARK_IN_CALL", "_SETTLE", "_SETTLE_WITH_ERROR", "_RELEASE"]
FENCED += ["_RELEASE_UNTIL", "_RETRY_LATER", "_MARK_SENDING"]


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    path: Path = tmp_path_factory.mktemp("plans") / "automation.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = make_engine(url)
    try:
        add_launches(make_session_factory(engine), 3000)
        with engine.begin() as connection:  # a day's history: few launches in flight
            connection.exec_driver_sql("UPDATE launches SET status = 'sent' WHERE id > 20")
            connection.exec_driver_sql("UPDATE launches SET status = 'sending' WHERE id <= 10")
            connection.exec_driver_sql("ANALYZE")
        with engine.connect() as connection:
            found = {}
            for name in FENCED:
                statement: CompiledStatement = getattr(outbox, name)
                compiled = statement._compiled(connection.dialect)
                params = tuple("[1, 2, 3]" if v is None else v for v in compiled.bind({}))
                cursor = connection.connection.cursor()
                rows = cursor.execute(f"EXPLAIN QUERY PLAN {compiled.sql}", params).fetchall()
                found[name] = [str(row[3]) for row in rows]
            return found
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", FENCED)
def test_a_batch_statement_finds_its_launches_by_primary_key(
    plans: dict[str, list[str]], name: str
) -> None:
    plan = plans[name]
    assert "SEARCH launches USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    assert not any("ix_launches" in step for step in plan), plan
