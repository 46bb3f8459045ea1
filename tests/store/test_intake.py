"""Storing webhooks (`store.intake`): one launch per change, on SQLite and PostgreSQL,
also for bodies without timestamps, whose changes are keyed by what moved and the day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from sqlalchemy.orm import Session, sessionmaker

from automation.events.payloads import decode_body
from automation.rules.load import load_rules
from automation.store import intake
from tests.conftest import TEST_RULES

MORNING = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
NEW, QUALIFIED, WON = "59936198", "59936202", "142"


def short_status(old: str, new: str) -> bytes:
    """Digital Pipeline's short status form of lead 27754599: no timestamp at all."""
    return urlencode(
        [
            ("leads[status][0][id]", "27754599"),
            ("leads[status][0][status_id]", new),
            ("leads[status][0][pipeline_id]", "7173574"),
            ("leads[status][0][old_status_id]", old),
            ("leads[status][0][old_pipeline_id]", "7173574"),
            ("account[id]", "30112233"),
        ]
    ).encode()


def launches_stored(sessions: sessionmaker[Session], body: bytes, at: datetime) -> int:
    """Store a webhook as the endpoint does, received and matched at `at`."""
    rules = load_rules(TEST_RULES)
    payload = decode_body(body, received_at=at)
    planned = [launch for event in payload.events for launch in rules.match(event, at)]
    inbound = intake.Inbound(body, "application/x-www-form-urlencoded", None, at, payload)
    with sessions.begin() as session:
        return intake.store(session.connection(), intake.Rows.of(inbound, planned)).launches


def test_short_status_forms_launch_once_per_move_and_again_on_a_later_day(
    sessions: sessionmaker[Session],
) -> None:
    into_qualified = short_status(NEW, QUALIFIED)

    first = launches_stored(sessions, into_qualified, MORNING)
    retry = launches_stored(sessions, into_qualified, MORNING + timedelta(hours=1, minutes=30))
    won = launches_stored(sessions, short_status(QUALIFIED, WON), MORNING + timedelta(hours=2))
    back = launches_stored(sessions, short_status(WON, QUALIFIED), MORNING + timedelta(hours=3))
    next_day = launches_stored(sessions, into_qualified, MORNING + timedelta(days=1))

    # `qualified` listens to stage 59936202: the move into it, from another stage, and
    # the same move again on the next day each launch; amoCRM's retry does not.
    assert (first, retry, won, back, next_day) == (1, 0, 0, 1, 1)
