"""`CompiledInsert` stores what `Connection.execute` would, `CompiledSelect` finds what
it would, and both fail as SQLAlchemy does.

The webhook's INSERTs skip SQLAlchemy's per-call machinery; these tests hold them to
the same stored bytes, the same conflict handling and the same errors, on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, bindparam, event, insert, or_, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from automation.store.database import make_engine
from automation.store.fastsql import CompiledInsert, CompiledSelect
from automation.store.intake import INSERT_DELIVERY as DELIVERY
from automation.store.intake import INSERT_LAUNCH as LAUNCH
from automation.store.models import Delivery, Launch
from automation.store.states import DeliveryStatus, LaunchStatus
from tests.launches import launch_values

NOW = datetime(2026, 11, 25, 10, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def delivery_row(**changes: Any) -> dict[str, Any]:
    return {
        "received_at": NOW,
        "remote_addr": "127.0.0.1",
        "content_type": "application/x-www-form-urlencoded",
        "body": b"leads%5Bstatus%5D%5B0%5D%5Bid%5D=1\x00\xff",
        "account_id": 30112233,
        "account_subdomain": "mybrand",
        "event_count": 1,
        "launch_count": 1,
        "duplicate_count": 0,
        "status": DeliveryStatus.ACCEPTED,
        "rules_version_id": 7,
    } | changes


def launch_row(delivery_id: int, **changes: Any) -> dict[str, Any]:
    """Every column the webhook's launch INSERT binds."""
    extra = {"delivery_id": delivery_id, "reason": None, "settled_at": None, "blocked_by": None}
    extra |= {"chat_lead_id": 27754599, "chat_contact_id": None, "rules_version_id": 7}
    return launch_values(NOW, dedupe_key="a" * 64, not_before=NOW + timedelta(minutes=1)) | (
        extra | changes
    )


def stored(connection: Connection, table: str, row_id: int) -> tuple[Any, ...]:
    """The row as the driver returns it, without the id: what is really on disk."""
    row = connection.exec_driver_sql(f"SELECT * FROM {table} WHERE id = {int(row_id)}").one()
    return tuple(row)[1:]


def test_a_delivery_is_stored_exactly_as_execute_stores_it(engine: Engine) -> None:
    with engine.begin() as connection:
        ours = DELIVERY.execute(connection, delivery_row())
        theirs = connection.execute(insert(Delivery).returning(Delivery.id), delivery_row())
        assert ours is not None
        assert stored(connection, "deliveries", ours[0]) == stored(
            connection, "deliveries", theirs.scalar_one()
        )


def test_a_launch_is_stored_exactly_as_execute_stores_it(engine: Engine) -> None:
    with engine.begin() as connection:
        delivery = DELIVERY.execute(connection, delivery_row())
        assert delivery is not None
        ours = LAUNCH.execute(connection, launch_row(delivery[0], dedupe_key="a" * 64))
        theirs = connection.execute(
            insert(Launch).returning(Launch.id), launch_row(delivery[0], dedupe_key="b" * 64)
        ).scalar_one()
        assert ours is not None
        mine = stored(connection, "launches", ours[0])
        other = stored(connection, "launches", theirs)
    differing = [i for i, (a, b) in enumerate(zip(mine, other, strict=True)) if a != b]
    assert len(differing) == 1  # the dedupe key, and nothing else
    with engine.connect() as connection:
        launch = connection.execute(select(Launch).where(Launch.id == ours[0])).one()
    assert launch.created_at == NOW and launch.not_before == NOW + timedelta(minutes=1)
    assert launch.status is LaunchStatus.PENDING


def test_a_conflicting_launch_returns_none_and_adds_nothing(engine: Engine) -> None:
    with engine.begin() as connection:
        delivery = DELIVERY.execute(connection, delivery_row())
        assert delivery is not None
        first = LAUNCH.execute(connection, launch_row(delivery[0]))
        again = LAUNCH.execute(connection, launch_row(delivery[0], rule="another"))
        count = connection.execute(text("SELECT count(*) FROM launches")).scalar_one()
    assert first is not None and again is None
    assert count == 1


def test_a_driver_error_is_sqlalchemys_and_hides_the_values(engine: Engine) -> None:
    """A launch of a delivery that does not exist breaks the foreign key."""
    with pytest.raises(IntegrityError) as caught, engine.begin() as connection:
        LAUNCH.execute(connection, launch_row(999_999, change_key="token-do-not-log"))
    assert "token-do-not-log" not in str(caught.value)
    assert "hidden due to hide_parameters" in str(caught.value)


def test_a_row_with_other_columns_is_refused(engine: Engine) -> None:
    with engine.begin() as connection:
        DELIVERY.execute(connection, delivery_row())
        fewer = delivery_row()
        del fewer["remote_addr"]
        with pytest.raises(ValueError, match="remote_addr"):
            DELIVERY.execute(connection, fewer)
        with pytest.raises(ValueError, match="surprise"):
            DELIVERY.execute(connection, fewer | {"surprise": 1})


def test_a_statement_that_binds_other_columns_is_refused(engine: Engine) -> None:
    sneaky = CompiledInsert(
        lambda _dialect: insert(Delivery).values(remote_addr="fixed").returning(Delivery.id)
    )
    row = delivery_row()
    del row["remote_addr"]
    row["surprise"] = 1
    with pytest.raises(ValueError, match="binds"), engine.begin() as connection:
        sneaky.execute(connection, row)


def since_probe() -> CompiledSelect:
    """Launches of one entity created after a time, in two statuses: a datetime bind,
    enum constants and a LIMIT, the three kinds of value the hot path's probes bind."""
    return CompiledSelect(
        select(Launch.id)
        .where(
            Launch.entity_id == bindparam("entity_id", None),
            Launch.created_at > bindparam("since", None, type_=Launch.created_at.type),
            or_(Launch.status == LaunchStatus.PENDING, Launch.status == LaunchStatus.SENT),
        )
        .order_by(Launch.id)
        .limit(2)
    )


def test_a_select_finds_what_execute_finds(engine: Engine) -> None:
    """Across the datetime boundary (microseconds included), the statuses and the
    limit: the same ids as the same statement through `Connection.execute`."""
    probe = since_probe()
    with engine.begin() as connection:
        delivery = DELIVERY.execute(connection, delivery_row())
        assert delivery is not None
        for number, (minutes, status) in enumerate(
            [(0, "pending"), (1, "sent"), (2, "failed"), (3, "pending"), (4, "sent")]
        ):
            row = launch_row(delivery[0], dedupe_key=f"{number:064d}", status=status)
            LAUNCH.execute(connection, row | {"created_at": NOW + timedelta(minutes=minutes)})
        for since in (NOW - timedelta(seconds=1), NOW, NOW + timedelta(microseconds=1)):
            values = {"entity_id": 27754599, "since": since}
            ours = [row[0] for row in probe.rows(connection, values)]
            theirs = connection.execute(probe.statement, values).scalars().all()
            assert ours == theirs and len(ours) == 2
        assert probe.rows(connection, {"entity_id": 1, "since": NOW}) == []


def test_a_select_refuses_unknown_binds_and_in_lists(engine: Engine) -> None:
    with engine.begin() as connection:
        with pytest.raises(ValueError, match="surprise"):
            since_probe().rows(connection, {"entity_id": 1, "surprise": 2})
        in_list = CompiledSelect(select(Launch.id).where(Launch.id.in_([1, 2])))
        with pytest.raises(ValueError, match="IN list"):
            in_list.rows(connection, {})


def test_a_begin_that_times_out_is_sqlalchemys_error_and_frees_the_writer_lock(
    database_url: str,
) -> None:
    """Another program holds SQLite's write lock past the busy timeout: the webhook
    gets SQLAlchemy's OperationalError (a 503), and our writer lock is not left held."""
    if not database_url.startswith("sqlite"):
        pytest.skip("BEGIN IMMEDIATE and the writer lock are SQLite's")
    engine = make_engine(database_url)
    event.listen(engine, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA busy_timeout=50"))
    blocker = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="locked"), engine.begin():
            pass
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    finished = threading.Event()

    def write_again() -> None:
        with engine.begin() as connection:
            DELIVERY.execute(connection, delivery_row())
        finished.set()

    writer = threading.Thread(target=write_again, daemon=True)
    writer.start()
    writer.join(timeout=10)
    engine.dispose()
    assert finished.is_set(), "the writer lock stayed held after the failed BEGIN"
