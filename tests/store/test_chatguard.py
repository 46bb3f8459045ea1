"""One bot per chat, as the database enforces it: webhooks stored through `intake`,
launches taken out through `outbox`, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from automation.events.payloads import decode_body
from automation.rules.load import load_rules
from automation.store import intake, outbox, story
from automation.store import replay as replaying
from automation.store.models import Launch, LaunchStatus
from automation.store.replay import Tally
from tests.store.test_launchlog import (
    FORM,
    NOW,
    RULES,
    fixture_body,
    launch_rows,
    send,
    status_change,
    store,
)

CONTACT, LEAD = 93589657, 27754620

#: A stage rule on the lead and a chat rule on the contact of that lead's chat.
LEAD_AND_CONTACT = """\
version: 1
defaults: {if_busy: %s}
rules:
  - name: qualified
    on: lead.status_changed
    launch: {bot_id: 101, entity: lead}
  - name: first-message
    on: message.added
    launch: {bot_id: 303, entity: contact}
"""
SKIP, WAIT = LEAD_AND_CONTACT % "skip", LEAD_AND_CONTACT % "wait"


def message(message_id: str = "a0ce13c7", lead: int = LEAD, contact: int = CONTACT) -> bytes:
    """The `add_message` fixture with another message id (and maybe another chat)."""
    body = fixture_body("add_message").replace(b"a0ce13c7", message_id.encode())
    return body.replace(str(LEAD).encode(), str(lead).encode()).replace(
        str(CONTACT).encode(), str(contact).encode()
    )


def statuses(sessions: sessionmaker[Session]) -> list[tuple[str, LaunchStatus]]:
    return [(launch.rule, launch.status) for launch in launch_rows(sessions)]


# ------------------------------------------------------------------------- storing


def test_a_second_bot_on_the_same_contact_is_skipped_naming_the_launch_it_yielded_to(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, fixture_body("add_talk"))
    store(sessions, fixture_body("add_message"), NOW + timedelta(seconds=1))

    first, second = launch_rows(sessions)
    assert (first.rule, first.status) == ("new-chat", LaunchStatus.PENDING)
    assert (second.rule, second.status) == ("first-message", LaunchStatus.SKIPPED)
    assert second.blocked_by == first.id
    assert second.reason == (
        f"busy: yielded to launch #{first.id} of bot 202 (rule 'new-chat') on contact "
        f"{CONTACT}, due 2026-11-25T12:00:00+00:00 (one_bot_per_chat: 10m, if_busy: skip)"
    )
    assert second.settled_at == NOW + timedelta(seconds=1)


def test_a_bot_on_the_contact_makes_the_lead_of_its_chat_busy(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, message(), NOW, SKIP)
    store(sessions, status_change(LEAD), NOW, SKIP)

    assert statuses(sessions) == [
        ("first-message", LaunchStatus.PENDING),
        ("qualified", LaunchStatus.SKIPPED),
    ]
    assert f"on lead {LEAD}" in (launch_rows(sessions)[1].reason or "")


def test_a_bot_on_the_lead_makes_the_contact_of_its_chat_busy(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, status_change(LEAD), NOW, SKIP)
    store(sessions, message(), NOW, SKIP)

    assert statuses(sessions) == [
        ("qualified", LaunchStatus.PENDING),
        ("first-message", LaunchStatus.SKIPPED),
    ]


def test_other_chats_are_not_busy(sessions: sessionmaker[Session]) -> None:
    store(sessions, status_change(LEAD), NOW, SKIP)
    store(sessions, message("b1", lead=111, contact=222), NOW, SKIP)
    store(sessions, status_change(333), NOW, SKIP)

    assert [status for _, status in statuses(sessions)] == [LaunchStatus.PENDING] * 3


def test_a_sent_launch_holds_its_chat_for_the_window_and_no_longer(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, status_change(LEAD), NOW, SKIP)
    send(sessions, NOW)  # sent at NOW + 1s
    store(sessions, message("m1"), NOW + timedelta(minutes=10), SKIP)
    store(sessions, message("m2"), NOW + timedelta(minutes=10, seconds=1), SKIP)

    assert statuses(sessions) == [
        ("qualified", LaunchStatus.SENT),
        ("first-message", LaunchStatus.SKIPPED),
        ("first-message", LaunchStatus.PENDING),
    ]
    assert "sent at 2026-11-25T12:00:01+00:00" in (launch_rows(sessions)[1].reason or "")


def test_failed_skipped_and_cancelled_launches_hold_no_chat(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, status_change(LEAD), NOW, SKIP)
    send(sessions, NOW, outcome="rejected", status_code=400, settle_as=LaunchStatus.FAILED)
    store(sessions, message("m1"), NOW + timedelta(minutes=1), SKIP)

    assert statuses(sessions)[-1] == ("first-message", LaunchStatus.PENDING)


def test_the_guard_set_to_zero_lets_both_bots_start(sessions: sessionmaker[Session]) -> None:
    rules = SKIP.replace("defaults: {if_busy: skip}", "defaults: {one_bot_per_chat: 0s}")
    store(sessions, status_change(LEAD), NOW, rules)
    store(sessions, message(), NOW, rules)

    assert [status for _, status in statuses(sessions)] == [LaunchStatus.PENDING] * 2


def test_the_same_bot_is_left_to_the_cooldown(sessions: sessionmaker[Session]) -> None:
    rules = SKIP.replace("bot_id: 303", "bot_id: 101")
    store(sessions, status_change(LEAD), NOW, rules)
    store(sessions, message(), NOW, rules)

    assert [status for _, status in statuses(sessions)] == [LaunchStatus.PENDING] * 2


def test_a_waiting_launch_is_pending_after_the_other_bots_window(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, status_change(LEAD), NOW, WAIT)
    store(sessions, message(), NOW + timedelta(seconds=5), WAIT)

    first, second = launch_rows(sessions)
    assert second.status is LaunchStatus.PENDING
    assert second.not_before == NOW + timedelta(seconds=5, minutes=10)
    assert second.blocked_by == first.id
    assert second.reason == (
        f"busy: waits for launch #{first.id} of bot 101 (rule 'qualified') on lead {LEAD}, "
        "due 2026-11-25T12:00:00+00:00; not before 2026-11-25T12:10:05+00:00 "
        "(one_bot_per_chat: 10m, if_busy: wait)"
    )


def test_within_one_delivery_the_rule_earlier_in_the_file_wins(
    sessions: sessionmaker[Session],
) -> None:
    """The body lists the message first; `new-chat` comes first in the file."""
    talk, chat_message = fixture_body("add_talk"), fixture_body("add_message")
    body = b"&".join([chat_message, *[p for p in talk.split(b"&") if p.startswith(b"talk")]])
    assert [event.type for event in decode_body(body, FORM, received_at=NOW).events] == [
        "message.added",
        "talk.added",
    ]

    store(sessions, body)

    assert statuses(sessions) == [
        ("new-chat", LaunchStatus.PENDING),
        ("first-message", LaunchStatus.SKIPPED),
    ]


def test_webhooks_in_savepoints_of_one_transaction_see_each_other(
    sessions: sessionmaker[Session],
) -> None:
    """The group commit's shape: a rolled-back savepoint's launch holds nothing."""
    rules = load_rules(SKIP)

    def rows(body: bytes) -> intake.Rows:
        payload = decode_body(body, FORM, received_at=NOW)
        inbound = intake.Inbound(body, FORM, None, NOW, payload)
        return intake.Rows.of(inbound, rules.plan(payload.events, NOW))

    with sessions.begin() as session:
        connection = session.connection()
        with connection.begin_nested() as rolled_back:
            intake.store(connection, rows(status_change(LEAD)))
            rolled_back.rollback()
        with connection.begin_nested():
            intake.store(connection, rows(message("m1")))
        with connection.begin_nested():
            intake.store(connection, rows(status_change(LEAD, updated_at=2)))

    assert statuses(sessions) == [
        ("first-message", LaunchStatus.PENDING),
        ("qualified", LaunchStatus.SKIPPED),
    ]


# ---------------------------------------------------------------------- dispatching


def test_a_waiting_launch_is_not_sent_while_the_launch_it_waits_for_is_unsent(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, status_change(LEAD), NOW, WAIT)
    store(sessions, message(), NOW, WAIT)
    blocker, waiter = launch_rows(sessions)
    with sessions.begin() as session:  # the blocker is held back (retries, a pause)
        session.execute(
            update(Launch).where(Launch.id == blocker.id).values(not_before=NOW + timedelta(days=1))
        )

    with sessions.begin() as session:
        claimed = outbox.claim_due(session, "d1", NOW + timedelta(hours=1))

    assert waiter.not_before == NOW + timedelta(minutes=10)  # due: only its blocker holds it
    assert claimed is None


def test_a_waiting_launch_is_released_at_once_when_its_blocker_fails(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, status_change(LEAD), NOW, WAIT)
    store(sessions, message(), NOW, WAIT)
    send(sessions, NOW, outcome="rejected", status_code=400, settle_as=LaunchStatus.FAILED)

    with sessions.begin() as session:
        claimed = outbox.claim_due(session, "d1", NOW + timedelta(seconds=2))

    waiter = launch_rows(sessions)[1]
    assert claimed is not None
    assert list(claimed.ids) == [waiter.id]
    assert waiter.reason == "released: the launch it waited for did not run"


def test_a_waiting_launch_is_released_at_once_when_its_blocker_is_cancelled(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, status_change(LEAD), NOW, WAIT)
    store(sessions, message(), NOW, WAIT)
    blocker, waiter = launch_rows(sessions)

    with sessions.begin() as session:
        assert outbox.cancel(session, [blocker.id], NOW) == [blocker.id]
    with sessions.begin() as session:
        claimed = outbox.claim_due(session, "d1", NOW)

    assert claimed is not None
    assert list(claimed.ids) == [waiter.id]


def test_one_request_never_carries_two_launches_of_one_chat(
    sessions: sessionmaker[Session],
) -> None:
    """With the guard off both are stored; they still go in two requests."""
    rules = SKIP.replace("defaults: {if_busy: skip}", "defaults: {one_bot_per_chat: 0s}")
    store(sessions, status_change(LEAD), NOW, rules)
    store(sessions, message(), NOW, rules)
    store(sessions, message("other", lead=1, contact=2), NOW, rules)
    first, second, other = launch_rows(sessions)

    with sessions.begin() as session:
        one = outbox.claim_due(session, "d1", NOW)
    with sessions.begin() as session:
        two = outbox.claim_due(session, "d1", NOW)

    assert one is not None and two is not None
    assert (list(one.ids), list(two.ids)) == ([first.id, other.id], [second.id])


def test_launches_stored_before_the_chat_columns_still_hold_their_entity(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, status_change(LEAD), NOW, SKIP)
    with sessions.begin() as session:
        session.execute(update(Launch).values(chat_lead_id=None, chat_contact_id=None))
    store(sessions, message(), NOW, SKIP)

    assert statuses(sessions)[-1] == ("first-message", LaunchStatus.SKIPPED)
    with sessions() as session:
        assert session.scalar(select(Launch.chat_lead_id).where(Launch.id == 2)) == LEAD


def test_rules_are_stored_with_their_defaults_when_the_file_says_nothing(
    sessions: sessionmaker[Session],
) -> None:
    """TEST_RULES sets no guard: the default (10m, skip) is on."""
    store(sessions, fixture_body("add_talk"), NOW, RULES)
    store(sessions, message("m1"), NOW + timedelta(minutes=9), RULES)

    assert statuses(sessions)[-1] == ("first-message", LaunchStatus.SKIPPED)


# ------------------------------------------------------------ the example rules file

EXAMPLE = (Path(__file__).parents[2] / "rules.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "at",
    [
        pytest.param(datetime(2026, 11, 24, 9, 0, tzinfo=UTC), id="Tuesday noon in Moscow"),
        pytest.param(datetime(2026, 11, 24, 20, 0, tzinfo=UTC), id="Tuesday 23:00 in Moscow"),
        pytest.param(datetime(2026, 11, 28, 9, 0, tzinfo=UTC), id="Saturday"),
        pytest.param(datetime(2026, 11, 30, 4, 0, tzinfo=UTC), id="Monday 07:00 in Moscow"),
    ],
)
@pytest.mark.parametrize("order", [("add_talk", "add_message"), ("add_message", "add_talk")])
def test_the_example_rules_start_one_bot_for_a_customers_first_message_at_any_hour(
    sessions: sessionmaker[Session], at: datetime, order: tuple[str, str]
) -> None:
    for name in order:
        store(sessions, fixture_body(name), at, EXAMPLE)

    started = [
        launch for launch in launch_rows(sessions) if launch.status is not LaunchStatus.SKIPPED
    ]
    assert len(started) == 1
    assert started[0].rule in {"new-chat-greeting", "after-hours-reply"}


# -------------------------------------------------------------------------- replay

#: The rules at replay time: a second bot on the same chat was added meanwhile.
WITH_A_SECOND_BOT = (
    RULES
    + """\
  - name: second-bot
    on: talk.added
    launch: {bot_id: 909, entity: lead}
"""
)


@pytest.mark.parametrize("dry_run", [False, True])
def test_replaying_a_delivery_does_not_start_a_second_bot_on_its_chat(
    sessions: sessionmaker[Session], dry_run: bool
) -> None:
    store(sessions, fixture_body("add_talk"), NOW)

    report = replaying.replay(
        sessions,
        load_rules(WITH_A_SECOND_BOT),
        NOW - timedelta(hours=1),
        None,
        NOW + timedelta(minutes=1),
        dry_run=dry_run,
    )

    assert report.rules == {"new-chat": Tally(0, 0, 1), "second-bot": Tally(0, 1, 0)}
    if not dry_run:
        assert statuses(sessions) == [
            ("new-chat", LaunchStatus.PENDING),
            ("second-bot", LaunchStatus.SKIPPED),
        ]


def test_a_dry_run_replay_counts_busy_chats_across_its_batches(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch of a dry run rolls back: the memory must know the earlier launch."""
    monkeypatch.setattr(replaying, "BATCH", 1)
    rules = SKIP.replace("defaults: {if_busy: skip}", "defaults: {one_bot_per_chat: 0s}")
    store(sessions, status_change(LEAD), NOW, rules)
    store(sessions, message(), NOW, rules)
    with sessions.begin() as session:
        session.execute(delete(Launch))

    since = NOW - timedelta(hours=1)
    dry = replaying.replay(sessions, load_rules(SKIP), since, None, NOW, dry_run=True)
    real = replaying.replay(sessions, load_rules(SKIP), since, None, NOW)

    assert dry.rules == real.rules == {"qualified": Tally(1, 0, 0), "first-message": Tally(0, 1, 0)}


def test_the_launch_story_exposes_the_launch_a_busy_one_yielded_to(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, fixture_body("add_talk"))
    store(sessions, fixture_body("add_message"))
    first, second = launch_rows(sessions)

    with sessions() as session:
        told = story.launch_story(session, second.id)

    assert told is not None
    assert (told.launch.status, told.launch.blocked_by) == (LaunchStatus.SKIPPED, first.id)
    assert (told.launch.reason or "").startswith(f"busy: yielded to launch #{first.id} of bot 202")
