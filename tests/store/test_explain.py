"""`explain_delivery`: every kind of "why not", judged with the rules that judged the
delivery on arrival, on SQLite and PostgreSQL; and it writes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from automation.events.payloads import decode_body
from automation.rules.load import RuleSet, load_rules
from automation.store import intake
from automation.store.explain import DeliveryExplanation, RuleVerdict, Verdict, explain_delivery
from automation.store.models import Base, RulesVersion
from automation.store.versions import record_in

FORM = "application/x-www-form-urlencoded"
#: Saturday 5 October 2024, 12:00 UTC (15:00 in Moscow).
SATURDAY = datetime(2024, 10, 5, 12, 0, tzinfo=UTC)
#: Monday 7 October 2024, 10:00 UTC (13:00 in Moscow).
MONDAY = datetime(2024, 10, 7, 10, 0, tzinfo=UTC)

RULES = """\
version: 1
rules:
  - name: qualified
    on: lead.status_changed
    when: {status_id: 59936202, pipeline_id: 7173574, price: {gt: 1000}}
    launch: {bot_id: 101, entity: lead}
  - name: office-only
    on: lead.status_changed
    when: {status_id: 142}
    active_hours:
      - {timezone: Europe/Moscow, days: mon-fri, from: "09:00", to: "18:00"}
    outside_hours: skip
    launch: {bot_id: 102, entity: lead}
  - name: off
    on: lead.status_changed
    enabled: false
    launch: {bot_id: 104, entity: lead}
  - name: chat-lead
    on: talk.added
    launch: {bot_id: 103, entity: lead}
  - name: greeting
    on: talk.added
    stop: true
    cooldown: 1d
    launch: {bot_id: 202, entity: contact}
  - name: after-greeting
    on: talk.added
    launch: {bot_id: 203, entity: contact}
"""


def item_body(prefix: str, **fields: object) -> bytes:
    """One webhook item as amoCRM form-encodes it: `prefix[field]=value` per field."""
    return urlencode({f"{prefix}[{name}]": value for name, value in fields.items()}).encode()


def lead_body(status: int, lead: int = 27754599, stamp: int = 1, price: int = 0) -> bytes:
    return item_body(
        "leads[status][0]",
        id=lead,
        status_id=status,
        pipeline_id=7173574,
        price=price,
        last_modified=stamp,
    )


def talk_body(talk_id: int, contact: int = 93589657, on: str = "leads") -> bytes:
    return item_body(
        "talk[add][0]", talk_id=talk_id, contact_id=contact, entity_id=27754620, entity_type=on
    )


def deliver(sessions: sessionmaker[Session], body: bytes, at: datetime, rules: str = RULES) -> int:
    """Store a webhook as the endpoint does, judged at `at` by `rules` (recorded)."""
    ruleset = load_rules(rules)
    payload = decode_body(body, FORM, received_at=at)
    planned = [launch for event in payload.events for launch in ruleset.match(event, at)]
    with sessions.begin() as session:
        version = record_in(session.connection(), ruleset, at)
        inbound = intake.Inbound(body, FORM, "127.0.0.1", at, payload, version.id)
        return intake.store(session.connection(), intake.Rows.of(inbound, planned)).delivery_id


def explain(
    sessions: sessionmaker[Session], delivery_id: int, today: str = RULES, **options: bool
) -> DeliveryExplanation:
    def current() -> RuleSet:
        return load_rules(today, "today.yaml")

    with sessions() as session:
        found = explain_delivery(session, delivery_id, current, **options)
    assert found is not None
    return found


def verdicts(explanation: DeliveryExplanation) -> dict[str, RuleVerdict]:
    [event] = explanation.events
    return {verdict.rule: verdict for verdict in event.rules}


def test_failed_conditions_are_listed_with_field_expected_and_got(
    sessions: sessionmaker[Session],
) -> None:
    found = verdicts(explain(sessions, deliver(sessions, lead_body(59936201), MONDAY)))

    qualified = found["qualified"]
    assert (qualified.matched, qualified.verdict) == (False, Verdict.CONDITIONS_FAILED)
    assert [(f.field, f.expected, f.got) for f in qualified.failed_conditions] == [
        ("status_id", "59936202", "59936201"),
        ("price", "> 1000", "0"),
    ]
    assert found["off"].verdict is Verdict.DISABLED


def test_outside_active_hours_names_the_local_time_and_the_next_opening(
    sessions: sessionmaker[Session],
) -> None:
    found = verdicts(explain(sessions, deliver(sessions, lead_body(142), SATURDAY)))

    office = found["office-only"]
    assert (office.matched, office.verdict, office.launch_id) == (True, Verdict.OUTSIDE_HOURS, None)
    assert office.hours is not None and office.hours.zone == "Europe/Moscow"
    assert office.hours.local_time.strftime("%a %H:%M %z") == "Sat 15:00 +0300"
    assert office.hours.next_open == datetime(2024, 10, 7, 6, 0, tzinfo=UTC)


def test_a_rule_whose_entity_the_event_lacks_says_which_entities_it_had(
    sessions: sessionmaker[Session],
) -> None:
    body = talk_body(1, on="contacts")
    found = verdicts(explain(sessions, deliver(sessions, body, MONDAY)))

    chat_lead = found["chat-lead"]
    assert (chat_lead.verdict, chat_lead.entity, chat_lead.carried) == (
        Verdict.ENTITY_MISSING,
        "lead",
        ["contact"],
    )
    assert found["greeting"].verdict is Verdict.LAUNCHED


def test_a_launch_yielding_to_another_bot_on_its_chat_names_that_launch(
    sessions: sessionmaker[Session],
) -> None:
    found = verdicts(explain(sessions, deliver(sessions, talk_body(1), MONDAY)))

    chat_lead, greeting = found["chat-lead"], found["greeting"]
    assert chat_lead.verdict is Verdict.LAUNCHED
    assert (greeting.verdict, greeting.earlier_launch_id) == (Verdict.BUSY, chat_lead.launch_id)


def test_a_launch_inside_the_cooldown_names_the_earlier_launch(
    sessions: sessionmaker[Session],
) -> None:
    no_guard = RULES.replace("rules:\n", "defaults: {one_bot_per_chat: 0s}\nrules:\n", 1)
    first = deliver(sessions, talk_body(1), MONDAY, no_guard)
    second = deliver(sessions, talk_body(2), MONDAY + timedelta(hours=1), no_guard)

    launched = verdicts(explain(sessions, first))["greeting"]
    skipped = verdicts(explain(sessions, second))["greeting"]
    assert launched.verdict is Verdict.LAUNCHED and launched.launch_id is not None
    assert skipped.verdict is Verdict.COOLDOWN
    assert skipped.earlier_launch_id == launched.launch_id
    assert skipped.launch_id not in (None, launched.launch_id)


def test_a_change_already_launched_names_the_existing_launch(
    sessions: sessionmaker[Session],
) -> None:
    first = deliver(sessions, lead_body(142), MONDAY)
    again = deliver(sessions, lead_body(142), MONDAY + timedelta(seconds=5))

    original = verdicts(explain(sessions, first))["office-only"]
    duplicate = verdicts(explain(sessions, again))["office-only"]
    assert duplicate.verdict is Verdict.DUPLICATE
    assert duplicate.launch_id == original.launch_id
    assert explain(sessions, again).launches == []


def test_rules_after_a_stop_rule_name_the_rule_that_stopped_them(
    sessions: sessionmaker[Session],
) -> None:
    found = verdicts(explain(sessions, deliver(sessions, talk_body(1), MONDAY)))

    after = found["after-greeting"]
    assert (after.verdict, after.stopped_by, after.matched) == (Verdict.STOPPED, "greeting", False)


def test_the_stored_version_judges_not_todays_edited_file(
    sessions: sessionmaker[Session],
) -> None:
    before = RULES.replace("on: talk.added\n    stop: true", "on: talk.updated\n    stop: true")
    delivery = deliver(sessions, talk_body(1), MONDAY, rules=before)

    stored = explain(sessions, delivery)
    today = explain(sessions, delivery, use_current=True)

    assert stored.rules.version_id is not None and stored.rules.note is None
    assert "greeting" not in verdicts(stored)
    assert today.rules.version_id is None and "--current" in (today.rules.note or "")
    assert verdicts(today)["greeting"].verdict is Verdict.NOT_STORED


def test_a_delivery_without_a_version_or_whose_version_was_pruned_uses_todays_file(
    sessions: sessionmaker[Session],
) -> None:
    delivery = deliver(sessions, lead_body(142), MONDAY)
    with sessions.begin() as session:
        session.execute(delete(RulesVersion))

    pruned = explain(sessions, delivery)
    assert pruned.rules.version_id is None
    assert pruned.rules.note == (
        "rules version #1 is no longer stored (pruned): judged with today's file"
    )
    assert pruned.rules.path == "today.yaml"
    with sessions.begin() as session:
        session.execute(Base.metadata.tables["deliveries"].update().values(rules_version_id=None))
    old = explain(sessions, delivery)
    assert old.rules.note == (
        "stored before rules versions were recorded: judged with today's file"
    )
    assert verdicts(old)["office-only"].verdict is Verdict.LAUNCHED


@pytest.mark.parametrize("body", [lead_body(142), talk_body(1), b"leads[status]=x"])
def test_explaining_writes_nothing(sessions: sessionmaker[Session], body: bytes) -> None:
    deliver(sessions, talk_body(9), MONDAY - timedelta(hours=2))
    delivery = deliver(sessions, body, MONDAY)

    def counts() -> list[int]:
        with sessions() as session:
            return [
                session.scalar(select(func.count()).select_from(table)) or 0
                for table in Base.metadata.sorted_tables
            ]

    before = counts()
    found = explain(sessions, delivery)
    assert counts() == before
    assert found.delivery.id == delivery


def test_an_undecodable_body_says_why(sessions: sessionmaker[Session]) -> None:
    ruleset = load_rules(RULES)
    with sessions.begin() as session:
        version = record_in(session.connection(), ruleset, MONDAY)
        payload = decode_body(lead_body(1), FORM, received_at=MONDAY)
        inbound = intake.Inbound(b"\xff\xfe", FORM, None, MONDAY, payload, version.id)
        delivery = intake.store(session.connection(), intake.Rows.of(inbound, [])).delivery_id

    found = explain(sessions, delivery)
    assert found.events == [] and found.decode_error is not None
