"""The launch log library (`automation.launchlog`) and the `launch_log` view, on SQLite
and PostgreSQL. Launches get into the database the way the server puts them there:
`intake.store` for webhooks, `outbox`'s dispatcher functions for API calls."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
from alembic import command
from sqlalchemy import inspect, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from automation.events.payloads import decode_body
from automation.rules.load import RuleSet, load_rules
from automation.store import intake, launchlog, outbox, story, transitions
from automation.store.database import alembic_config, make_engine, upgrade
from automation.store.launchlog import LaunchQuery
from automation.store.models import Launch
from automation.store.states import LaunchStatus
from automation.store.transitions import CANCEL, RETRY
from automation.web import schemas
from tests.conftest import TEST_RULES, WEBHOOKS

FORM = "application/x-www-form-urlencoded"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

RULES = TEST_RULES


def fixture_body(name: str) -> bytes:
    return (WEBHOOKS / f"{name}.form").read_bytes().strip()


def status_change(lead_id: int, updated_at: int = 1727700894) -> bytes:
    """A `leads[status]` webhook moving `lead_id` into the stage `qualified` listens to."""
    return urlencode(
        {
            "account[id]": "30112233",
            "account[subdomain]": "mybrand",
            "leads[status][0][id]": str(lead_id),
            "leads[status][0][status_id]": "59936202",
            "leads[status][0][pipeline_id]": "7173574",
            "leads[status][0][updated_at]": str(updated_at),
        }
    ).encode()


def store(
    sessions: sessionmaker[Session],
    body: bytes,
    at: datetime = NOW,
    rules: str | RuleSet = RULES,
    content_type: str = FORM,
) -> int:
    """Store a webhook as the endpoint does (matched at `at`); returns its delivery id."""
    ruleset = load_rules(rules) if isinstance(rules, str) else rules
    payload = decode_body(body, content_type, received_at=at)
    planned = ruleset.plan(payload.events, at)
    inbound = intake.Inbound(body, content_type, "127.0.0.1", at, payload)
    with sessions.begin() as session:
        rows = intake.Rows.of(inbound, planned)
        return intake.store(session.connection(), rows).delivery_id


def send(
    sessions: sessionmaker[Session],
    at: datetime,
    *,
    outcome: str = "accepted",
    status_code: int | None = 202,
    settle_as: LaunchStatus | None = LaunchStatus.SENT,
    reason: str = "accepted by amoCRM",
) -> int:
    """Do what a dispatcher does with everything due at `at`: one call, one outcome."""
    with sessions.begin() as session:
        claimed = outbox.claim_due(session, "test-dispatcher", at)
        assert claimed is not None
        call_id = outbox.start_call(session, claimed, "/api/v2/salesbot/run", at)
    finished = at + timedelta(seconds=1)
    with sessions.begin() as session:
        outbox.finish_call(
            session,
            call_id,
            finished,
            outcome=outcome,
            status_code=status_code,
            excerpt='{"success": true}',
        )
        if settle_as is not None:
            outbox.settle(session, claimed, settle_as, finished, reason)
        else:
            outbox.retry_later(session, claimed, finished, finished, f"{outcome}: {status_code}")
    return call_id


def set_status(sessions: sessionmaker[Session], launch_id: int, status: LaunchStatus) -> None:
    with sessions.begin() as session:
        session.execute(update(Launch).where(Launch.id == launch_id).values(status=status))


def launch_rows(sessions: sessionmaker[Session]) -> list[Launch]:
    with sessions() as session:
        return list(session.scalars(select(Launch).order_by(Launch.id)))


# ------------------------------------------------------------------------------ view


def test_launch_log_view_has_the_documented_columns(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        columns = list(session.execute(text("SELECT * FROM launch_log")).keys())

    assert columns == [
        *("id", "status", "reason", "rule", "event_type", "bot_id", "entity_type"),
        *("entity_kind", "entity_id", "created_at", "not_before", "settled_at", "attempts"),
        *("retries", "last_error", "delivery_id", "received_at", "account_id", "call_id"),
        *("call_status_code", "call_outcome", "call_finished_at"),
    ]
    assert columns == [column.name for column in launchlog.launch_log.columns]


def test_launch_log_view_joins_launch_delivery_and_settling_call(
    sessions: sessionmaker[Session],
) -> None:
    delivery_id = store(sessions, fixture_body("status_lead"))
    call_id = send(sessions, NOW)

    with sessions() as session:
        row = session.execute(select(launchlog.launch_log)).one()._asdict()

    assert row == {
        "id": 1,
        "status": "sent",
        "reason": "accepted by amoCRM",
        "rule": "qualified",
        "event_type": "lead.status_changed",
        "bot_id": 101,
        "entity_type": 2,
        "entity_kind": "lead",
        "entity_id": 27754599,
        "created_at": NOW,
        "not_before": NOW,
        "settled_at": NOW + timedelta(seconds=1),
        "attempts": 1,
        "retries": 0,
        "last_error": None,
        "delivery_id": delivery_id,
        "received_at": NOW,
        "account_id": 30112233,
        "call_id": call_id,
        "call_status_code": 202,
        "call_outcome": "accepted",
        "call_finished_at": NOW + timedelta(seconds=1),
    }


def test_launch_log_view_names_contacts_and_keeps_launches_without_a_delivery(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, fixture_body("add_talk"))
    with sessions.begin() as session:
        session.execute(update(Launch).values(delivery_id=None))

    with sessions() as session:
        row = session.execute(text("SELECT * FROM launch_log")).one()

    assert (row.entity_type, row.entity_kind, row.entity_id) == (1, "contact", 93589657)
    assert (row.delivery_id, row.received_at, row.account_id, row.call_id) == (
        None,
        None,
        None,
        None,
    )


def test_downgrade_drops_the_view_and_upgrade_creates_it_again(database_url: str) -> None:
    engine = make_engine(database_url)

    command.downgrade(alembic_config(database_url), "0002")
    views_after_downgrade = inspect(engine).get_view_names()
    upgrade(database_url)
    views_after_upgrade = inspect(engine).get_view_names()
    engine.dispose()

    assert "launch_log" not in views_after_downgrade
    assert "launch_log" in views_after_upgrade


# -------------------------------------------------------------------------- listing


def test_list_shows_newest_first_up_to_the_limit(sessions: sessionmaker[Session]) -> None:
    for lead in (1, 2, 3):
        store(sessions, status_change(lead))

    with sessions() as session:
        rows = story.list_launches(session, LaunchQuery(limit=2))

    assert [(row.id, row.entity_id) for row in rows] == [(3, 3), (2, 2)]


def test_list_filters_by_status_rule_bot_and_entity(sessions: sessionmaker[Session]) -> None:
    store(sessions, status_change(1))  # qualified, bot 101, lead 1
    store(sessions, fixture_body("add_talk"))  # new-chat, bot 202, contact 93589657
    store(sessions, status_change(2))
    set_status(sessions, 3, LaunchStatus.FAILED)

    def ids(query: LaunchQuery) -> list[int]:
        with sessions() as session:
            return [row.id for row in story.list_launches(session, query)]

    assert ids(LaunchQuery(statuses=(LaunchStatus.FAILED,))) == [3]
    assert ids(LaunchQuery(statuses=(LaunchStatus.FAILED, LaunchStatus.PENDING))) == [3, 2, 1]
    assert ids(LaunchQuery(rule="new-chat")) == [2]
    assert ids(LaunchQuery(bot_id=101)) == [3, 1]
    assert ids(LaunchQuery(entity_id=93589657)) == [2]
    assert ids(LaunchQuery(rule="qualified", statuses=(LaunchStatus.PENDING,))) == [1]
    assert ids(LaunchQuery(rule="no-such-rule")) == []


def test_list_since_is_inclusive_and_until_exclusive_on_creation_time(
    sessions: sessionmaker[Session],
) -> None:
    for hours_ago, lead in ((3, 1), (2, 2), (1, 3)):
        store(sessions, status_change(lead), at=NOW - timedelta(hours=hours_ago))

    with sessions() as session:
        rows = story.list_launches(
            session, LaunchQuery(since=NOW - timedelta(hours=3), until=NOW - timedelta(hours=1))
        )

    assert [row.entity_id for row in rows] == [2, 1]


def test_table_pads_columns_and_shortens_long_reasons(sessions: sessionmaker[Session]) -> None:
    store(sessions, status_change(27754599))
    store(sessions, fixture_body("add_talk"))
    with sessions.begin() as session:
        session.execute(update(Launch).where(Launch.id == 1).values(reason="x " * 40))

    with sessions() as session:
        lines = launchlog.format_table(story.list_launches(session, LaunchQuery()))

    assert lines == [
        "ID  STATUS   RULE       BOT  ENTITY            CREATED               DUE"
        "                   ATTEMPTS  REASON",
        "2   pending  new-chat   202  contact 93589657  2026-11-25 12:00:00Z  2026-11-25 12:00:00Z"
        "  0",
        "1   pending  qualified  101  lead 27754599     2026-11-25 12:00:00Z  2026-11-25 12:00:00Z"
        "  0         "
        + "x " * 29
        + "x…",  # 60 characters: the first 59 of the reason and an ellipsis
    ]


def test_table_shows_times_in_the_zone_asked_for_and_the_due_time_of_pending_only(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, status_change(27754599))
    store(sessions, status_change(27754600))
    with sessions.begin() as session:
        session.execute(update(Launch).where(Launch.id == 1).values(status=LaunchStatus.SENT))

    with sessions() as session:
        lines = launchlog.format_table(
            story.list_launches(session, LaunchQuery()), ZoneInfo("Europe/Moscow")
        )

    created, due, attempts = (lines[0].index(name) for name in ("CREATED", "DUE", "ATTEMPTS"))
    assert [[line[created:due].strip(), line[due:attempts].strip()] for line in lines[1:]] == [
        ["2026-11-25 15:00:00+03:00", "2026-11-25 15:00:00+03:00"],
        ["2026-11-25 15:00:00+03:00", ""],
    ]


def test_json_form_has_iso_times_and_status_values(sessions: sessionmaker[Session]) -> None:
    store(sessions, status_change(5))

    with sessions() as session:
        [row] = json.loads(schemas.launches_json(story.list_launches(session, LaunchQuery()), {}))

    assert (row["status"], row["created_at"], row["settled_at"], row["entity_kind"]) == (
        "pending",
        "2026-11-25T12:00:00+00:00",
        None,
        "lead",
    )


# ------------------------------------------------------------------------ one story


def test_story_tells_the_delivery_the_event_every_call_and_why_it_was_sent(
    sessions: sessionmaker[Session],
) -> None:
    delivery_id = store(sessions, fixture_body("status_lead"))
    first = send(sessions, NOW, outcome="rate_limited", status_code=429, settle_as=None)
    second = send(sessions, NOW + timedelta(seconds=5))

    with sessions() as session:
        told = story.launch_story(session, 1)

    assert told is not None
    assert (told.event_group, told.event_index, told.change_key) == (
        "leads[status]",
        0,
        "lead:27754599@1727700894:s59936202",
    )
    source = told.source
    assert source is not None
    assert (
        source.id,
        source.received_at,
        source.account_id,
        source.account_subdomain,
        source.content_type,
        source.status,
    ) == (delivery_id, NOW, 30112233, "mybrand", FORM, "accepted")
    assert [(a.call_id, a.status_code, a.outcome, a.position) for a in told.attempts] == [
        (first, 429, "rate_limited", 0),
        (second, 202, "accepted", 0),
    ]
    assert (told.launch.attempts, told.launch.retries) == (2, 1)
    assert told.verdict == f"sent: amoCRM accepted API call #{second} at 2026-11-25 12:00:06Z"


def test_story_text_has_the_launch_the_delivery_the_calls_and_the_verdict(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, fixture_body("status_lead"))
    call_id = send(sessions, NOW)

    with sessions() as session:
        told = story.launch_story(session, 1)
    assert told is not None

    assert launchlog.describe_story(told) == [
        "launch #1: sent",
        "  rule:       qualified",
        "  bot:        101 on lead 27754599",
        "  event:      lead.status_changed (leads[status][0])",
        "  change:     lead:27754599@1727700894:s59936202",
        "  created:    2026-11-25 12:00:00Z   not before 2026-11-25 12:00:00Z",
        "  settled:    2026-11-25 12:00:01Z",
        "  attempts:   1 API call(s); attempt 1 of 8",
        "  reason:     accepted by amoCRM",
        "  last error: -",
        "delivery #1: received 2026-11-25 12:00:00Z, account mybrand, accepted, "
        "application/x-www-form-urlencoded",
        "API calls: 1",
        f"  #{call_id} 2026-11-25 12:00:00Z → 2026-11-25 12:00:01Z  202  accepted  "
        "(item 1 of 1, test-dispatcher)",
        '      answer: {"success": true}',
        f"why: sent: amoCRM accepted API call #{call_id} at 2026-11-25 12:00:01Z",
    ]


def test_story_text_of_a_launch_waiting_to_retry_says_which_attempt_and_when(
    sessions: sessionmaker[Session],
) -> None:
    """Issue 15: `attempts: 4 API call(s), 4 retry(ies)` said nothing of the budget."""
    store(sessions, fixture_body("status_lead"))
    send(sessions, NOW, outcome="server_error", status_code=500, settle_as=None)

    with sessions() as session:
        told = story.launch_story(session, 1)
    assert told is not None

    lines = launchlog.describe_story(told, max_attempts=5)
    assert "  attempts:   1 API call(s); next: attempt 2 of 5, due 2026-11-25 12:00:01Z" in lines


def test_story_of_a_launch_that_does_not_exist_is_none(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        assert story.launch_story(session, 42) is None


def test_story_of_a_cooldown_skip_names_the_earlier_launch(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, fixture_body("add_message"))
    store(sessions, fixture_body("add_message").replace(b"a0ce13c7", b"b1df24d8"))

    with sessions() as session:
        told = story.launch_story(session, 2)

    assert told is not None
    assert told.attempts == ()
    assert told.verdict == (
        "skipped, never sent: cooldown: launch #1 of bot 303 on this entity at "
        "2026-11-25 12:00:00Z is inside the 1h cooldown"
    )


@pytest.mark.parametrize(
    ("status", "reason", "last_error", "expected"),
    [
        (LaunchStatus.PENDING, None, None, "pending: due at 2026-11-25 12:00:00Z"),
        (
            LaunchStatus.PENDING,
            "retry after: server_error: 500",
            None,
            "pending: due at 2026-11-25 12:00:00Z (retry after: server_error: 500)",
        ),
        (
            LaunchStatus.FAILED,
            "failed after 8 attempts; last: server_error: 503",
            "failed after 8 attempts; last: server_error: 503",
            "failed after 0 API call(s): failed after 8 attempts; last: server_error: 503",
        ),
        (
            LaunchStatus.UNCERTAIN,
            "uncertain: no answer from amoCRM (read timeout)",
            None,
            "uncertain: no answer from amoCRM (read timeout); amoCRM may have started the "
            "bot, so it is not resent by itself (`automation launches retry` would, and may "
            "message the customer twice)",
        ),
        (LaunchStatus.CANCELLED, "cancelled by operator", None, "cancelled: cancelled by operator"),
        (
            LaunchStatus.DRY_RUN,
            "dry run: not sent",
            None,
            "dry run: recorded, never sent (DRY_RUN was on or no token was set)",
        ),
    ],
)
def test_verdict_explains_each_final_status_from_reason_and_last_error(
    sessions: sessionmaker[Session],
    status: LaunchStatus,
    reason: str | None,
    last_error: str | None,
    expected: str,
) -> None:
    store(sessions, status_change(1))
    with sessions.begin() as session:
        session.execute(update(Launch).values(status=status, reason=reason, last_error=last_error))

    with sessions() as session:
        told = story.launch_story(session, 1)

    assert told is not None
    assert told.verdict == expected


# ------------------------------------------------------------------ retry and cancel


def test_retry_by_id_refuses_each_launch_in_another_status_and_each_unknown_id(
    sessions: sessionmaker[Session],
) -> None:
    for lead in (1, 2, 3):
        store(sessions, status_change(lead))
    set_status(sessions, 1, LaunchStatus.FAILED)
    set_status(sessions, 2, LaunchStatus.SENT)

    with sessions() as session:
        plan = transitions.plan_by_ids(session, RETRY, [1, 2, 3, 9])

    assert [row.id for row in plan.targets] == [1]
    assert plan.refused == (
        "launch #2: refused: it is sent; only failed, uncertain or cancelled launches "
        "can be retried",
        "launch #3: refused: it is pending; only failed, uncertain or cancelled launches "
        "can be retried",
        "launch #9: refused: it does not exist",
    )


def test_retry_makes_failed_uncertain_and_cancelled_launches_due_now_with_a_fresh_budget(
    sessions: sessionmaker[Session],
) -> None:
    for lead in (1, 2, 3):
        store(sessions, status_change(lead))
    send(
        sessions,
        NOW,
        outcome="server_error",
        status_code=500,
        settle_as=LaunchStatus.FAILED,
        reason="failed after 8 attempts; last: server_error: 500",
    )
    with sessions.begin() as session:
        session.execute(update(Launch).values(retries=7))
    set_status(sessions, 2, LaunchStatus.UNCERTAIN)
    set_status(sessions, 3, LaunchStatus.CANCELLED)
    later = NOW + timedelta(hours=1)

    with sessions() as session:
        plan = transitions.plan_by_ids(session, RETRY, [1, 2, 3])
    with sessions.begin() as session:
        changed, missed = transitions.apply_plan(session, plan, later)

    assert (changed, missed, plan.uncertain) == ([1, 2, 3], [], 1)
    for launch in launch_rows(sessions):
        assert launch.status is LaunchStatus.PENDING
        assert (launch.not_before, launch.updated_at, launch.settled_at) == (later, later, None)
        assert (launch.retries, launch.attempts) == (0, 1)
        assert launch.reason == "retried by operator"
    assert launch_rows(sessions)[0].last_error == (
        "failed after 8 attempts; last: server_error: 500"
    )


def test_retry_by_status_picks_only_those_settled_since_the_given_moment(
    sessions: sessionmaker[Session],
) -> None:
    for lead in (1, 2, 3):
        store(sessions, status_change(lead))
    with sessions.begin() as session:
        for launch_id, settled in ((1, NOW - timedelta(hours=3)), (2, NOW), (3, NOW)):
            session.execute(
                update(Launch)
                .where(Launch.id == launch_id)
                .values(status=LaunchStatus.FAILED, settled_at=settled)
            )
    set_status(sessions, 3, LaunchStatus.UNCERTAIN)

    with sessions() as session:
        failed = transitions.plan_by_status(
            session, RETRY, [LaunchStatus.FAILED], settled_since=NOW - timedelta(hours=1)
        )
        both = transitions.plan_by_status(
            session, RETRY, [LaunchStatus.FAILED, LaunchStatus.UNCERTAIN]
        )

    assert [row.id for row in failed.targets] == [2]
    assert [row.id for row in both.targets] == [1, 2, 3]


def test_cancel_settles_pending_launches_and_refuses_others(
    sessions: sessionmaker[Session],
) -> None:
    for lead in (1, 2):
        store(sessions, status_change(lead))
    set_status(sessions, 2, LaunchStatus.SENDING)

    with sessions() as session:
        plan = transitions.plan_by_ids(session, CANCEL, [1, 2])
    with sessions.begin() as session:
        changed, _ = transitions.apply_plan(session, plan, NOW)

    assert changed == [1]
    assert plan.refused == (
        "launch #2: refused: it is sending; only pending launches can be cancelled",
    )
    first, second = launch_rows(sessions)
    assert (first.status, first.settled_at, first.reason) == (
        LaunchStatus.CANCELLED,
        NOW,
        "cancelled by operator",
    )
    assert second.status is LaunchStatus.SENDING


def test_cancel_of_pending_launches_can_be_limited_to_one_rule(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, status_change(1))
    store(sessions, fixture_body("add_talk"))

    with sessions() as session:
        plan = transitions.plan_by_status(session, CANCEL, [LaunchStatus.PENDING], rule="new-chat")

    assert [row.rule for row in plan.targets] == ["new-chat"]


def test_a_launch_claimed_between_plan_and_apply_is_left_alone_and_reported(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, status_change(1))
    with sessions() as session:
        plan = transitions.plan_by_ids(session, CANCEL, [1])
    with sessions.begin() as session:
        outbox.claim_due(session, "test-dispatcher", NOW)

    with sessions.begin() as session:
        changed, missed = transitions.apply_plan(session, plan, NOW)

    assert (changed, missed) == ([], ["launch #1: not cancelled: it left pending meanwhile"])
    assert launch_rows(sessions)[0].status is LaunchStatus.SENDING
