"""Queued large webhooks (`store.queue`) expanded by a dispatcher's expander
(`dispatch.expander`): exactly once, fenced, resumable, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from automation.dispatch import expander as expanding
from automation.dispatch.expander import Expander
from automation.dispatch.loop import build as build_dispatcher
from automation.errors import ClaimLost
from automation.rules.load import load_rules
from automation.store import queue, versions
from automation.store.deliveries import expansions_of
from automation.store.models import Delivery, DeliveryEntity, Launch, QueuedDelivery
from automation.store.queue import Progress, RawDelivery
from automation.store.states import DeliveryStatus
from automation.store.vitals import read_vitals
from tests.launches import leads_form as added_leads

FORM = "application/x-www-form-urlencoded"
ARRIVED = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
LEADS_ADDED = """\
version: 1
rules:
  - name: welcome-new-lead
    on: lead.added
    launch: {bot_id: 404, entity: lead}
"""


def leads_form(count: int, account: int = 30112233) -> bytes:
    """`count` minimal added leads of account `account` (subdomain mybrand)."""
    return added_leads(count, account, subdomain="mybrand")


def leads_json(count: int, account: int = 30112233) -> bytes:
    leads = [{"id": 27_000_000 + i} for i in range(count)]
    body = {"account": {"id": str(account), "subdomain": "mybrand"}, "leads": {"add": leads}}
    return json.dumps(body).encode()


@pytest.fixture
def version_id(sessions: sessionmaker[Session]) -> int:
    return versions.record_version(sessions.kw["bind"], load_rules(LEADS_ADDED), ARRIVED).id


@pytest.fixture
def enqueue(sessions: sessionmaker[Session], version_id: int) -> Callable[..., int]:
    """Store a body as the webhook stores a large one; its delivery id."""

    def put(body: bytes, content_type: str = FORM, account: int | None = 30112233) -> int:
        raw = RawDelivery(body, content_type, None, ARRIVED, account, "mybrand", version_id)
        with sessions.begin() as session:
            return queue.queue_delivery(session.connection(), raw)

    return put


def expander(sessions: sessionmaker[Session], owner: str = "d1", **kw: Any) -> Expander:
    found = Expander(sessions, lambda: owner, timedelta(seconds=30), "missing.yaml", **kw)
    found.pause_share = 0.0  # no pauses between chunks in tests
    return found


def launch_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Launch)) or 0)


def delivery(sessions: sessionmaker[Session], delivery_id: int) -> Delivery:
    with sessions() as session:
        found = session.get(Delivery, delivery_id)
        assert found is not None
        session.expunge(found)
        return found


def queue_row(sessions: sessionmaker[Session], delivery_id: int) -> QueuedDelivery:
    with sessions() as session:
        found = session.get(QueuedDelivery, delivery_id)
        assert found is not None
        session.expunge(found)
        return found


@pytest.mark.parametrize(
    ("body", "content_type"), [(leads_form, FORM), (leads_json, "application/json")]
)
def test_a_queued_delivery_is_expanded_into_every_launch_once(
    sessions: sessionmaker[Session],
    enqueue: Callable[..., int],
    version_id: int,
    body: Callable[[int], bytes],
    content_type: str,
) -> None:
    delivery_id = enqueue(body(700), content_type)
    assert delivery(sessions, delivery_id).status is DeliveryStatus.QUEUED

    assert expander(sessions).drain() == 1

    stored = delivery(sessions, delivery_id)
    assert (stored.status, stored.event_count, stored.launch_count) == ("accepted", 700, 700)
    with sessions() as session:
        launches = session.execute(
            select(Launch.rule, Launch.rules_version_id, Launch.created_at, Launch.delivery_id)
        ).all()
        entities = session.scalar(select(func.count()).select_from(DeliveryEntity))
    assert len(launches) == 700 and entities == 700
    # Judged by the rules version in force when it arrived, as of its arrival.
    assert set(launches) == {("welcome-new-lead", version_id, ARRIVED, delivery_id)}
    row = queue_row(sessions, delivery_id)
    assert row.finished_at is not None and row.claim_token is None and row.claims == 1
    assert (row.planned, row.launches_done, row.entities_done) == (700, 700, 700)
    assert expander(sessions).drain() == 0  # nothing is left to expand


def test_an_expansion_that_stores_no_row_still_records_its_events_and_plan(
    sessions: sessionmaker[Session], enqueue: Callable[..., int]
) -> None:
    # Added leads without an id: 300 events that name no entity and plan no launch.
    fields = ["account[id]=30112233", "account[subdomain]=mybrand"]
    fields += [f"leads[add][{i}][name]=lead{i}" for i in range(300)]
    delivery_id = enqueue("&".join(fields).encode())

    assert expander(sessions).drain() == 1

    stored = delivery(sessions, delivery_id)
    assert (stored.status, stored.event_count, stored.launch_count) == ("accepted", 300, 0)
    row = queue_row(sessions, delivery_id)
    assert row.finished_at is not None and (row.planned, row.launches_done) == (0, 0)


def test_a_held_claim_is_not_taken_by_a_second_expander(
    sessions: sessionmaker[Session], enqueue: Callable[..., int]
) -> None:
    enqueue(leads_form(10))
    stale_after = timedelta(seconds=30)
    with sessions.begin() as session:
        first = queue.claim_next(session, "d1", ARRIVED, stale_after)
    with sessions.begin() as session:
        second = queue.claim_next(session, "d2", ARRIVED + timedelta(seconds=5), stale_after)
    assert first is not None and second is None


def test_a_chunk_of_a_claim_taken_over_stores_nothing(
    sessions: sessionmaker[Session], enqueue: Callable[..., int]
) -> None:
    """The first expander stalled past the stale time; the second took the delivery
    over and expands it. The first one's chunk, when it wakes, is refused whole."""
    delivery_id = enqueue(leads_form(10))
    stale_after = timedelta(seconds=30)
    with sessions.begin() as session:
        stalled = queue.claim_next(session, "d1", ARRIVED, stale_after)
    with sessions.begin() as session:
        taker = queue.claim_next(session, "d2", ARRIVED + timedelta(minutes=1), stale_after)
    assert stalled is not None and taker is not None
    work = expander(sessions)._work(stalled)

    with pytest.raises(ClaimLost), sessions.begin() as session:
        queue.store_chunk(
            session.connection(), stalled, Progress(0, 0), [], work.planned[:5], (10, 10), ARRIVED
        )

    assert launch_count(sessions) == 0
    assert queue_row(sessions, delivery_id).claimed_by == "d2"


def test_a_chunk_from_progress_already_passed_stores_nothing(
    sessions: sessionmaker[Session], enqueue: Callable[..., int]
) -> None:
    enqueue(leads_form(10))
    with sessions.begin() as session:
        claim = queue.claim_next(session, "d1", ARRIVED, timedelta(seconds=30))
    assert claim is not None
    planned = expander(sessions)._work(claim).planned
    with sessions.begin() as session:
        queue.store_chunk(
            session.connection(), claim, Progress(0, 0), [], planned[:5], (10, 10), ARRIVED
        )

    with pytest.raises(ClaimLost), sessions.begin() as session:
        queue.store_chunk(
            session.connection(), claim, Progress(0, 0), [], planned[:5], (10, 10), ARRIVED
        )

    assert launch_count(sessions) == 5


class Crash(Exception):
    """The dispatcher died (SIGKILL) between two chunks."""


def test_an_expansion_cut_short_resumes_after_the_last_chunk_with_no_launch_twice(
    sessions: sessionmaker[Session], enqueue: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    delivery_id = enqueue(leads_form(900))
    # Chunks of 300 rows: the 900 entity rows, then launches.
    monkeypatch.setattr(expanding, "FIRST_CHUNK", 300)
    monkeypatch.setattr(expanding, "MAX_CHUNK", 300)
    dying = expander(sessions)
    chunks = 0
    real_chunk = dying._chunk

    def chunk_then_die(*args: Any) -> Any:
        nonlocal chunks
        if chunks == 4:
            raise Crash
        chunks += 1
        return real_chunk(*args)

    monkeypatch.setattr(dying, "_chunk", chunk_then_die)
    with pytest.raises(Crash):
        dying.drain()
    midway = queue_row(sessions, delivery_id)
    assert midway.finished_at is None and launch_count(sessions) == 300

    # Its claim goes stale (DISPATCHER_DEAD_AFTER); the next dispatcher takes it over.
    resumed = Expander(sessions, lambda: "d2", timedelta(0), "missing.yaml")
    resumed.pause_share = 0.0
    assert resumed.drain() == 1

    stored = delivery(sessions, delivery_id)
    assert (stored.status, stored.launch_count, stored.duplicate_count) == ("accepted", 900, 0)
    assert launch_count(sessions) == 900
    assert queue_row(sessions, delivery_id).claims == 2


def test_a_stopping_expander_lets_go_of_its_claim_for_the_next_one(
    sessions: sessionmaker[Session], enqueue: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    delivery_id = enqueue(leads_form(600))
    monkeypatch.setattr(expanding, "FIRST_CHUNK", 100)
    stopping = expander(sessions)
    real_chunk = stopping._chunk

    def chunk_then_stop(*args: Any) -> Any:
        stopping.stopping.set()
        return real_chunk(*args)

    monkeypatch.setattr(stopping, "_chunk", chunk_then_stop)
    stopping.expand_next()

    row = queue_row(sessions, delivery_id)
    assert row.claim_token is None and row.finished_at is None
    assert (row.entities_done, row.launches_done) == (100, 0)
    assert expander(sessions, owner="d2").drain() == 1  # at once: no stale wait
    assert launch_count(sessions) == 600


@pytest.mark.parametrize(
    ("body", "content_type", "account", "error"),
    [
        (b'{"account": {"id": "30112233"}, "leads": [', "application/json", 30112233, "JSON"),
        (leads_form(20, account=5), FORM, 30112233, "account[id]"),
    ],
    ids=["undecodable", "another-account"],
)
def test_a_queued_body_that_does_not_decode_ends_rejected_with_its_error(
    sessions: sessionmaker[Session],
    enqueue: Callable[..., int],
    body: bytes,
    content_type: str,
    account: int,
    error: str,
) -> None:
    delivery_id = enqueue(body, content_type, account)

    assert expander(sessions).drain() == 1

    assert delivery(sessions, delivery_id).status is DeliveryStatus.REJECTED
    row = queue_row(sessions, delivery_id)
    assert row.finished_at is not None and error in str(row.error)
    assert launch_count(sessions) == 0


def test_vitals_count_what_waits_and_since_when_and_the_expansion_tells_its_progress(
    sessions: sessionmaker[Session], enqueue: Callable[..., int]
) -> None:
    def waiting() -> tuple[int, datetime | None]:
        with sessions() as session:
            facts = read_vitals(session, ARRIVED)
        return facts.queued, facts.oldest_queued

    def shown(delivery_id: int) -> str:
        with sessions() as session:
            return expansions_of(session, [delivery_id])[delivery_id].describe()

    assert waiting() == (0, None)
    delivery_id = enqueue(leads_form(5))
    enqueue(leads_form(5))
    assert waiting() == (2, ARRIVED)
    assert shown(delivery_id) == (
        "queued, not started: waiting for a dispatcher (since 2026-12-07 05:00:00Z)"
    )

    expander(sessions).drain()

    assert waiting() == (0, None)
    assert shown(delivery_id).endswith(": 5 of 5 launches planned")


def test_dispatch_once_expands_what_is_queued_then_sends_its_launches(
    sessions: sessionmaker[Session],
    enqueue: Callable[..., int],
    make_settings: Callable[..., Any],
) -> None:
    delivery_id = enqueue(leads_form(150))

    stats = build_dispatcher(make_settings(dry_run=True), sessions).run(once=True)

    assert delivery(sessions, delivery_id).status is DeliveryStatus.ACCEPTED
    assert stats.dry_run == 150  # the launches it expanded went out in the same run
