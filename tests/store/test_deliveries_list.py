"""`list_deliveries`, the one list of `deliveries list`, `GET /api/deliveries` and the
console: newest first by time received, keyset pages that neither skip nor repeat,
and on SQLite a plan that walks an index instead of sorting a table."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, event, update
from sqlalchemy.orm import Session, sessionmaker

from automation.store.database import make_engine, upgrade
from automation.store.deliveries import DeliveryQuery, list_deliveries
from automation.store.models import Delivery
from automation.store.states import DeliveryStatus
from tests.store.test_explain import MONDAY, deliver, lead_body


def ids(sessions: sessionmaker[Session], **query: object) -> list[int]:
    with sessions() as session:
        page = list_deliveries(session, DeliveryQuery(**query))  # type: ignore[arg-type]
    return [row.id for row in page.deliveries]


def all_pages(sessions: sessionmaker[Session], limit: int) -> list[list[int]]:
    pages, cursor = [], None
    while True:
        with sessions() as session:
            query = DeliveryQuery(limit=limit, before_id=cursor)
            page = list_deliveries(session, query)
        pages.append([row.id for row in page.deliveries])
        if page.next_cursor is None:
            return pages
        cursor = int(page.next_cursor)


def test_newest_first_is_by_time_received_even_when_ids_disagree(
    sessions: sessionmaker[Session],
) -> None:
    late = deliver(sessions, lead_body(1), MONDAY + timedelta(seconds=2))
    early = deliver(sessions, lead_body(2), MONDAY)  # committed after, received before
    middle = deliver(sessions, lead_body(3), MONDAY + timedelta(seconds=1))

    assert ids(sessions) == [late, middle, early]
    assert all_pages(sessions, limit=1) == [[late], [middle], [early]]


def test_pages_of_equal_times_neither_skip_nor_repeat(sessions: sessionmaker[Session]) -> None:
    made = [deliver(sessions, lead_body(n), MONDAY) for n in range(5)]

    pages = all_pages(sessions, limit=2)
    assert pages == [[made[4], made[3]], [made[2], made[1]], [made[0]]]


def test_a_cursor_whose_delivery_was_pruned_continues_below_it(
    sessions: sessionmaker[Session],
) -> None:
    made = [deliver(sessions, lead_body(n), MONDAY + timedelta(minutes=n)) for n in range(4)]
    with sessions.begin() as session:
        session.execute(delete(Delivery).where(Delivery.id == made[2]))

    assert ids(sessions, before_id=made[2]) == [made[1], made[0]]
    assert ids(sessions, before_id=made[0]) == []


def test_filters_combine_with_the_cursor(sessions: sessionmaker[Session]) -> None:
    made = [
        deliver(sessions, lead_body(n, lead=7 if n % 2 else 8), MONDAY + timedelta(minutes=n))
        for n in range(6)
    ]
    with sessions.begin() as session:
        session.execute(
            update(Delivery).where(Delivery.id == made[3]).values(status="unrecognized")
        )

    assert ids(sessions, entity_id=7) == [made[5], made[3], made[1]]
    assert ids(sessions, entity_id=7, before_id=made[3]) == [made[1]]
    assert ids(sessions, statuses=(DeliveryStatus.UNRECOGNIZED,)) == [made[3]]
    both = (DeliveryStatus.UNRECOGNIZED, DeliveryStatus.ACCEPTED)
    assert ids(sessions, statuses=both, limit=2) == [made[5], made[4]]
    window = {"since": MONDAY + timedelta(minutes=1), "until": MONDAY + timedelta(minutes=4)}
    assert ids(sessions, **window) == [made[3], made[2], made[1]]
    assert ids(sessions, **window, before_id=made[2]) == [made[1]]


def test_on_sqlite_pages_walk_an_index_and_sort_nothing(tmp_path: Path) -> None:
    """The plans that keep the console's list fast on a large table: a time window, a
    deep page and the rare unrecognized status each walk an index in list order."""
    url = f"sqlite:///{tmp_path / 'plans.db'}"
    upgrade(url)
    engine = make_engine(url)
    sent: list[tuple[str, object]] = []

    def capture(*args: object) -> None:
        sent.append((str(args[2]), args[3]))  # the statement and parameters as sent

    event.listen(engine, "before_cursor_execute", capture)
    queries = {
        "window": DeliveryQuery(since=MONDAY - timedelta(days=9), until=MONDAY),
        "page": DeliveryQuery(before_id=1000),
        "unrecognized": DeliveryQuery(statuses=(DeliveryStatus.UNRECOGNIZED,)),
    }
    plans = {}
    for name, query in queries.items():
        sent.clear()
        with Session(engine) as session:
            list_deliveries(session, query)
        [(statement, parameters)] = sent  # an empty page reads no entities
        with engine.connect() as connection:
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plans[name] = [str(row[3]) for row in plan]
    engine.dispose()
    assert "ix_deliveries_received_at" in plans["window"][0]
    assert "ix_deliveries_received_at" in plans["page"][0]
    assert "ix_deliveries_unrecognized" in plans["unrecognized"][0]
    for name, plan in plans.items():
        assert not any("TEMP B-TREE" in step for step in plan), (name, plan)
