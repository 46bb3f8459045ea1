"""Group commit: every webhook waiting stored in one transaction, each in its own
SAVEPOINT, released only after the commit; on SQLite and PostgreSQL.

To make a batch deterministically, the committer's first webhook is held (its store
waits on an event) while the others queue up behind it: they are then all waiting
when the committer comes back for the next batch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import SQLAlchemyError

from automation.errors import CommitterUnavailable
from automation.events.payloads import decode_body
from automation.rules.load import load_rules_file
from automation.store import groupcommit
from automation.store.database import make_engine
from automation.store.groupcommit import Committer
from automation.store.intake import Enqueued, Inbound, Rows
from automation.store.models import Delivery, Launch, LaunchStatus
from tests.conftest import incoming_message


def lead_moved(lead_id: int) -> bytes:
    return (
        f"account[id]=30112233&leads[status][0][id]={lead_id}&leads[status][0][status_id]=59936202"
    ).encode()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = make_engine(database_url)
    yield made
    made.dispose()


@pytest.fixture
def rows_of(rules_file: Path) -> Callable[[bytes], Rows]:
    rules = load_rules_file(str(rules_file))

    def build(body: bytes) -> Rows:
        now = datetime.now(UTC)
        payload = decode_body(body, received_at=now)
        planned = [launch for item in payload.events for launch in rules.match(item, now)]
        return Rows.of(Inbound(body, "form", "127.0.0.1", now, payload), planned)

    return build


def commits(engine: Engine) -> list[int]:
    """A list that grows by one at every commit on `engine`."""
    counted: list[int] = []
    event.listen(engine, "commit", lambda _connection: counted.append(1))
    return counted


class Held:
    """Holds the committer inside its first webhook until `release()`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered, self.go = threading.Event(), threading.Event()
        real = groupcommit.store

        def store(connection: Any, rows: Rows, **options: Any) -> Enqueued:
            if not self.entered.is_set():
                self.entered.set()
                assert self.go.wait(30), "never released"
            return real(connection, rows, **options)

        monkeypatch.setattr(groupcommit, "store", store)

    def release(self) -> None:
        self.go.set()


class Outcomes:
    """Webhooks submitted from threads of their own, and what each got."""

    def __init__(self, committer: Committer) -> None:
        self.committer = committer
        self.results: dict[int, Enqueued | BaseException] = {}
        self.threads: list[threading.Thread] = []

    def submit(self, key: int, rows: Rows) -> None:
        def run() -> None:
            try:
                self.results[key] = self.committer.store(rows)
            except (SQLAlchemyError, CommitterUnavailable) as exc:
                self.results[key] = exc

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)

    def wait_queued(self, count: int) -> None:
        """Until `count` webhooks wait in the committer's queue."""
        for _ in range(3000):
            if len(self.committer._waiting) >= count:
                return
            threading.Event().wait(0.01)
        raise AssertionError(f"only {len(self.committer._waiting)} queued")

    def join(self) -> dict[int, Enqueued | BaseException]:
        for thread in self.threads:
            thread.join(60)
        return self.results


def count(engine: Engine, model: type) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(model)) or 0)


def test_every_webhook_waiting_is_stored_in_one_commit(
    engine: Engine, rows_of: Callable[[bytes], Rows], monkeypatch: pytest.MonkeyPatch
) -> None:
    held, counted, committer = Held(monkeypatch), commits(engine), Committer(engine)
    outcomes = Outcomes(committer)
    outcomes.submit(0, rows_of(lead_moved(1)))
    assert held.entered.wait(30)
    for key in range(1, 9):
        outcomes.submit(key, rows_of(lead_moved(100 + key)))
    outcomes.wait_queued(8)

    held.release()
    results = outcomes.join()
    committer.stop()

    assert all(isinstance(result, Enqueued) and result.launches == 1 for result in results.values())
    assert len(counted) == 2  # the held webhook alone, then the eight that waited
    assert (count(engine, Delivery), count(engine, Launch)) == (9, 9)


def test_one_webhook_alone_is_committed_at_once(
    engine: Engine, rows_of: Callable[[bytes], Rows]
) -> None:
    counted, committer = commits(engine), Committer(engine)

    stored = committer.store(rows_of(lead_moved(1)))
    committed_before_the_answer = len(counted)
    committer.stop()

    assert stored.launches == 1
    assert committed_before_the_answer == 1


def test_a_failing_webhook_in_a_batch_fails_alone(
    engine: Engine, rows_of: Callable[[bytes], Rows], monkeypatch: pytest.MonkeyPatch
) -> None:
    held, committer = Held(monkeypatch), Committer(engine)
    outcomes = Outcomes(committer)
    outcomes.submit(0, rows_of(lead_moved(1)))
    assert held.entered.wait(30)
    good = rows_of(lead_moved(2))
    poison = rows_of(lead_moved(3))
    poison.delivery["body"] = None  # NOT NULL: refused by the database, mid-batch
    outcomes.submit(1, good)
    outcomes.wait_queued(1)
    outcomes.submit(2, poison)
    outcomes.wait_queued(2)
    outcomes.submit(3, rows_of(lead_moved(4)))
    outcomes.wait_queued(3)

    held.release()
    results = outcomes.join()
    committer.stop()

    assert isinstance(results[2], SQLAlchemyError)
    assert [isinstance(results[key], Enqueued) for key in (0, 1, 3)] == [True] * 3
    with engine.connect() as connection:
        leads = sorted(connection.scalars(select(Launch.entity_id)))
    assert leads == [1, 2, 4]


def test_duplicates_and_cooldowns_hold_inside_one_batch(
    engine: Engine, rows_of: Callable[[bytes], Rows], monkeypatch: pytest.MonkeyPatch
) -> None:
    held, committer = Held(monkeypatch), Committer(engine)
    outcomes = Outcomes(committer)
    outcomes.submit(0, rows_of(lead_moved(1)))
    assert held.entered.wait(30)
    bodies = [lead_moved(7), lead_moved(7), incoming_message("m-1"), incoming_message("m-2")]
    for key, body in enumerate(bodies, start=1):
        outcomes.submit(key, rows_of(body))
        outcomes.wait_queued(key)

    held.release()
    results = outcomes.join()
    committer.stop()

    stored = {key: result for key, result in results.items() if isinstance(result, Enqueued)}
    assert len(stored) == 5
    assert (stored[1].launches, stored[2].launches, stored[2].duplicates) == (1, 0, 1)
    assert (stored[3].launches, stored[4].launches, stored[4].skipped) == (1, 0, 1)
    with engine.connect() as connection:
        statuses = list(connection.scalars(select(Launch.status).order_by(Launch.id)))
    assert statuses.count(LaunchStatus.SKIPPED) == 1


def test_a_database_outage_answers_every_waiting_webhook_with_an_error(
    rows_of: Callable[[bytes], Rows], tmp_path: Path
) -> None:
    broken = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={})
    committer = Committer(broken)
    outcomes = Outcomes(committer)
    for key in range(6):
        outcomes.submit(key, rows_of(lead_moved(key + 1)))

    results = outcomes.join()
    committer.stop()
    broken.dispose()

    assert len(results) == 6
    assert all(isinstance(result, SQLAlchemyError) for result in results.values())


def test_stopping_finishes_the_batch_in_hand_and_every_webhook_waiting(
    engine: Engine, rows_of: Callable[[bytes], Rows], monkeypatch: pytest.MonkeyPatch
) -> None:
    held, committer = Held(monkeypatch), Committer(engine)
    outcomes = Outcomes(committer)
    outcomes.submit(0, rows_of(lead_moved(1)))
    assert held.entered.wait(30)
    for key in range(1, 4):
        outcomes.submit(key, rows_of(lead_moved(10 + key)))
    outcomes.wait_queued(3)

    stopper = threading.Thread(target=committer.stop)
    stopper.start()
    held.release()
    stopper.join(60)
    results = outcomes.join()

    assert not stopper.is_alive() and committer._thread is not None
    assert not committer._thread.is_alive()
    assert all(isinstance(result, Enqueued) for result in results.values())
    assert count(engine, Delivery) == 4
    with pytest.raises(CommitterUnavailable, match="stopping"):
        committer.store(rows_of(lead_moved(99)))
    assert count(engine, Delivery) == 4


def test_a_webhook_that_waits_too_long_for_its_turn_is_refused_and_never_stored(
    engine: Engine, rows_of: Callable[[bytes], Rows], monkeypatch: pytest.MonkeyPatch
) -> None:
    held, committer = Held(monkeypatch), Committer(engine, max_wait=0.2)
    outcomes = Outcomes(committer)
    outcomes.submit(0, rows_of(lead_moved(1)))
    assert held.entered.wait(30)
    outcomes.submit(1, rows_of(lead_moved(2)))
    outcomes.threads[-1].join(30)  # gave up while the committer was held

    held.release()
    results = outcomes.join()
    committer.stop()

    assert isinstance(results[0], Enqueued)
    assert isinstance(results[1], CommitterUnavailable)
    with engine.connect() as connection:
        assert list(connection.scalars(select(Launch.entity_id))) == [1]


def test_two_batches_locking_the_same_chats_in_opposite_orders_do_not_deadlock(
    database_url: str, rows_of: Callable[[bytes], Rows], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two web processes (two engines) commit a batch each at the same moment: leads 1
    then 2, and leads 2 then 1. Each stores its first webhook, then both meet at a
    barrier before their second: locking chat by chat, each would now wait for the
    other's first chat, and PostgreSQL would fail one batch. A batch that locks all its
    chats before its first webhook cannot meet the other there (the barrier times out
    for it, and it goes on alone)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: two batches never hold chats at once")
    barrier, real = threading.Barrier(2, timeout=3), groupcommit.store
    first_done: set[int] = set()

    def store(connection: Any, rows: Rows, **options: Any) -> Enqueued:
        stored = real(connection, rows, **options)
        if threading.get_ident() not in first_done:
            first_done.add(threading.get_ident())
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
        return stored

    monkeypatch.setattr(groupcommit, "store", store)
    engines = [make_engine(database_url), make_engine(database_url)]
    batches = [
        [groupcommit._Ticket(rows_of(lead_moved(lead))) for lead in order]
        for order in ((1, 2), (2, 1))
    ]
    committers = [Committer(engine) for engine in engines]
    threads = [
        threading.Thread(target=committer._commit, args=(batch,))
        for committer, batch in zip(committers, batches, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for committer, engine in zip(committers, engines, strict=True):
        committer._drop_connection()
        engine.dispose()

    errors = [ticket.error for batch in batches for ticket in batch if ticket.error]
    assert errors == []
    assert all(ticket.stored is not None for batch in batches for ticket in batch)
