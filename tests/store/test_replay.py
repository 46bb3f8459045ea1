"""`replay` and `rules diff`: stored deliveries run through rules again, on SQLite and
PostgreSQL, through the library and the CLI."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from automation.rules.load import load_rules
from automation.store import replay as replaying
from automation.store.models import Delivery, Launch
from automation.store.replay import Tally
from automation.store.states import DeliveryStatus, LaunchStatus
from tests.launches import delivery_values
from tests.store.test_launchlog import RULES, fixture_body, status_change, store

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
#: When the deliveries of these tests arrived: three days before the replay.
THEN = NOW - timedelta(days=3)

#: The rules in use when the deliveries arrived: nothing listened to stage changes.
CHATS_ONLY = """\
version: 1
rules:
  - name: new-chat
    on: talk.added
    launch: {bot_id: 202, entity: contact}
"""


def count(sessions: sessionmaker[Session], model: type[Delivery] | type[Launch]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def launches(sessions: sessionmaker[Session]) -> list[Launch]:
    with sessions() as session:
        return list(session.scalars(select(Launch).order_by(Launch.id)))


def message(message_id: str) -> bytes:
    """An incoming chat message from contact 93589657 (`first-message`, 1h cooldown)."""
    return fixture_body("add_message").replace(b"a0ce13c7", message_id.encode())


def replay(
    sessions: sessionmaker[Session], rules: str = RULES, dry_run: bool = False
) -> replaying.ReplayReport:
    return replaying.replay(
        sessions, load_rules(rules), THEN - timedelta(hours=1), None, NOW, dry_run=dry_run
    )


# --------------------------------------------------------------------------- replay


def test_replay_adds_what_the_current_rules_make_of_stored_deliveries(
    sessions: sessionmaker[Session],
) -> None:
    delivery_id = store(sessions, fixture_body("status_lead"), THEN, CHATS_ONLY)
    store(sessions, fixture_body("add_talk"), THEN, CHATS_ONLY)

    report = replay(sessions)

    assert (report.deliveries, report.undecodable) == (2, 0)
    assert report.rules == {"qualified": Tally(1, 0, 0), "new-chat": Tally(0, 0, 1)}
    added = launches(sessions)[-1]
    assert (added.rule, added.entity_id, added.delivery_id) == ("qualified", 27754599, delivery_id)
    assert added.status is LaunchStatus.PENDING
    # "Now" is the replay's moment, not the delivery's: no launch is born overdue.
    assert (added.created_at, added.not_before) == (NOW, NOW)


def test_replay_adds_no_delivery_rows_and_leaves_the_stored_ones_alone(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, fixture_body("status_lead"), THEN, CHATS_ONLY)
    with sessions() as session:
        before = session.execute(select(Delivery.launch_count, Delivery.status)).all()

    replay(sessions)

    with sessions() as session:
        after = session.execute(select(Delivery.launch_count, Delivery.status)).all()
    assert after == before == [(0, DeliveryStatus.ACCEPTED)]


def test_replaying_twice_adds_nothing_the_second_time(sessions: sessionmaker[Session]) -> None:
    store(sessions, fixture_body("status_lead"), THEN, CHATS_ONLY)
    store(sessions, fixture_body("add_talk"), THEN, CHATS_ONLY)

    replay(sessions)
    second = replay(sessions)

    assert second.total() == Tally(added=0, skipped=0, duplicates=2)
    assert count(sessions, Launch) == 2


def test_same_change_delivered_twice_is_replayed_into_one_launch(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, fixture_body("status_lead"), THEN, CHATS_ONLY)
    store(sessions, fixture_body("status_lead"), THEN, CHATS_ONLY)  # amoCRM's retry

    report = replay(sessions)

    assert report.rules == {"qualified": Tally(added=1, skipped=0, duplicates=1)}


def test_replay_applies_cooldowns_as_of_now(sessions: sessionmaker[Session]) -> None:
    store(sessions, message("m-1"), THEN, CHATS_ONLY)
    store(sessions, message("m-2"), THEN + timedelta(hours=2), CHATS_ONLY)

    report = replay(sessions)

    assert report.rules == {"first-message": Tally(added=1, skipped=1, duplicates=0)}
    first, second = launches(sessions)
    assert (first.status, second.status) == (LaunchStatus.PENDING, LaunchStatus.SKIPPED)
    assert second.reason is not None and second.reason.startswith("cooldown: launch #1 of bot 303")


def test_replay_counts_a_rules_delay_from_now(sessions: sessionmaker[Session]) -> None:
    store(sessions, fixture_body("status_lead"), THEN, CHATS_ONLY)
    delayed = RULES.replace(
        "launch: {bot_id: 101, entity: lead}", "launch: {bot_id: 101, entity: lead}\n    delay: 10m"
    )

    replay(sessions, delayed)

    [launch] = launches(sessions)
    assert launch.not_before == NOW + timedelta(minutes=10)


def test_replay_runs_unrecognized_deliveries_too(sessions: sessionmaker[Session]) -> None:
    # Stored as unrecognized by an older decoder; the current one understands the body.
    unrecognized = delivery_values(
        THEN, body=fixture_body("status_lead"), event_count=1, status=DeliveryStatus.UNRECOGNIZED
    )
    with sessions.begin() as session:
        session.execute(insert(Delivery), unrecognized)

    report = replay(sessions)

    assert report.rules == {"qualified": Tally(added=1, skipped=0, duplicates=0)}


def test_replay_decodes_each_body_with_its_stored_content_type(
    sessions: sessionmaker[Session],
) -> None:
    body = (
        b'{"account": {"id": "30112233"}, "talk": {"add": [{"talk_id": "7", "contact_id": "5"}]}}'
    )
    store(sessions, body, THEN, "version: 1\nrules: []\n", "application/json; charset=utf-8")

    report = replay(sessions)

    assert report.rules == {"new-chat": Tally(added=1, skipped=0, duplicates=0)}
    assert launches(sessions)[0].entity_id == 5


def test_a_body_that_no_longer_decodes_is_counted_and_left_out(
    sessions: sessionmaker[Session],
) -> None:
    broken = delivery_values(
        THEN,
        content_type="application/json",
        body=b"\xff not json",
        status=DeliveryStatus.UNRECOGNIZED,
    )
    with sessions.begin() as session:
        session.execute(insert(Delivery), broken)

    report = replay(sessions)

    assert (report.deliveries, report.undecodable, report.rules) == (1, 1, {})


def test_replay_reads_only_deliveries_received_in_the_period(
    sessions: sessionmaker[Session],
) -> None:
    for days_ago, lead in ((10, 1), (3, 2), (1, 3)):
        store(sessions, status_change(lead), NOW - timedelta(days=days_ago), CHATS_ONLY)

    report = replaying.replay(
        sessions,
        load_rules(RULES),
        NOW - timedelta(days=3),
        NOW - timedelta(days=1),
        NOW,
    )

    assert report.deliveries == 1
    assert [launch.entity_id for launch in launches(sessions)] == [2]


def test_dry_run_writes_nothing_and_predicts_the_real_run_exactly(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One delivery per transaction: what earlier batches would add must still count.
    monkeypatch.setattr(replaying, "BATCH", 1)
    store(sessions, fixture_body("status_lead"), THEN, CHATS_ONLY)
    store(sessions, fixture_body("status_lead"), THEN, CHATS_ONLY)
    store(sessions, message("m-1"), THEN, CHATS_ONLY)
    store(sessions, message("m-2"), THEN, CHATS_ONLY)

    predicted = replay(sessions, dry_run=True)
    assert count(sessions, Launch) == 0
    real = replay(sessions)

    assert (
        predicted.rules
        == real.rules
        == {
            "qualified": Tally(added=1, skipped=0, duplicates=1),
            "first-message": Tally(added=1, skipped=1, duplicates=0),
        }
    )
    assert count(sessions, Launch) == 3


def test_replay_report_text_has_a_line_per_rule_and_the_totals() -> None:
    report = replaying.ReplayReport(
        deliveries=5,
        undecodable=1,
        rules={"qualified": Tally(2, 0, 1), "first-message": Tally(1, 1, 0)},
    )

    assert replaying.describe_replay(report, dry_run=False) == [
        "5 deliveries replayed (1 no longer decode and were left out)",
        "rules: not stored yet",
        "  qualified: 2 added, 0 skipped (cooldown or busy chat), 1 already stored",
        "  first-message: 1 added, 1 skipped (cooldown or busy chat), 0 already stored",
        "total: 3 added, 1 skipped (cooldown or busy chat), 1 already stored",
    ]
    assert replaying.describe_replay(report, dry_run=True)[::4] == [
        "dry run, nothing written: 5 deliveries replayed (1 no longer decode and were left out)",
        "total: 3 would be added, 1 would be skipped (cooldown or busy chat), 1 already stored",
    ]


# ------------------------------------------------------------------------ rules diff

NEW_RULES = """\
version: 1
rules:
  - name: qualified
    on: lead.status_changed
    when: {status_id: 59936202}
    launch: {bot_id: 101, entity: lead}
    delay: 1h
  - name: new-chat
    on: talk.added
    launch: {bot_id: 909, entity: contact}
"""


def test_diff_lists_launches_the_new_rules_add_and_drop_ignoring_times(
    sessions: sessionmaker[Session],
) -> None:
    store(sessions, fixture_body("status_lead"), THEN)
    store(sessions, fixture_body("add_talk"), THEN)
    store(sessions, message("m-1"), THEN)

    diff = replaying.diff_rules(
        sessions, load_rules(RULES), load_rules(NEW_RULES), THEN - timedelta(hours=1), None
    )

    change = "talk:106564:add"
    assert diff.deliveries == 3
    assert [key.describe() for key in diff.added] == [
        f"new-chat: bot 909 on contact 93589657 ({change})"
    ]
    assert [key.describe() for key in diff.dropped] == [
        "first-message: bot 303 on contact 93589657 (message:m-1-4825-4ecc-9dc0-b35c49b86db4)",
        f"new-chat: bot 202 on contact 93589657 ({change})",
    ]
    # `qualified` gained a delay: the same launch, later, is no difference.
    assert diff.per_rule() == {
        "first-message": (0, 0, 1),
        "new-chat": (0, 1, 1),
        "qualified": (1, 0, 0),
    }


def test_diff_writes_nothing(sessions: sessionmaker[Session]) -> None:
    store(sessions, fixture_body("status_lead"), THEN, CHATS_ONLY)

    replaying.diff_rules(
        sessions, load_rules(CHATS_ONLY), load_rules(RULES), THEN - timedelta(hours=1), None
    )

    assert (count(sessions, Delivery), count(sessions, Launch)) == (1, 0)


def test_diff_text_has_counts_per_rule_then_one_line_per_difference() -> None:
    key = replaying.DiffKey("qualified", 101, 2, 27754599, "lead:27754599@1:s2")
    diff = replaying.RulesDiff(3, added=(key,), dropped=(), kept=Counter({"new-chat": 2}))

    assert replaying.describe_diff(diff, "rules.yaml", "new.yaml") == [
        "rules.yaml → new.yaml: 3 stored deliveries compared",
        "  rules.yaml: not stored",
        "  new.yaml: not stored",
        "  new-chat: 2 kept, 0 added, 0 dropped",
        "  qualified: 0 kept, 1 added, 0 dropped",
        "+ qualified: bot 101 on lead 27754599 (lead:27754599@1:s2)",
    ]


# ----------------------------------------------------------------------------- CLI


def cli(database_url: str, rules_file: Path, *args: str) -> Result:
    env = {"DATABASE_URL": database_url, "RULES_FILE": str(rules_file), "WEBHOOK_SECRET": "s3cret"}
    from automation.cli import main

    return CliRunner().invoke(main, list(args), env=env)


def test_rules_diff_exits_1_when_the_launches_differ_and_0_when_they_do_not(
    sessions: sessionmaker[Session], database_url: str, tmp_path: Path
) -> None:
    store(sessions, fixture_body("status_lead"), THEN, CHATS_ONLY)
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(CHATS_ONLY)
    new.write_text(RULES)
    since = (THEN - timedelta(hours=1)).isoformat()

    differ = cli(database_url, old, "rules", "diff", str(new), "--since", since)
    same = cli(database_url, old, "rules", "diff", str(old), "--since", since)

    assert (differ.exit_code, same.exit_code) == (1, 0), differ.output + same.output
    assert same.output.splitlines()[-1] == "no differences"


def test_replay_command_prints_per_rule_counts_and_a_second_run_adds_nothing(
    sessions: sessionmaker[Session], database_url: str, rules_file: Path
) -> None:
    store(sessions, fixture_body("status_lead"), THEN, CHATS_ONLY)
    since = (THEN - timedelta(hours=1)).isoformat()

    first = cli(database_url, rules_file, "replay", "--since", since)
    second = cli(database_url, rules_file, "replay", "--since", since)

    head, rules, *rest = first.output.splitlines()
    assert (first.exit_code, head, rest) == (
        0,
        "1 deliveries replayed",
        [
            "  qualified: 1 added, 0 skipped (cooldown or busy chat), 0 already stored",
            "total: 1 added, 0 skipped (cooldown or busy chat), 0 already stored",
        ],
    )
    assert rules.startswith("rules: version #1 (sha256 ") and rules.endswith(f"from {rules_file})")
    assert (
        second.output.splitlines()[-1]
        == "total: 0 added, 0 skipped (cooldown or busy chat), 1 already stored"
    )
    assert count(sessions, Launch) == 1
    with sessions() as session:
        assert list(session.scalars(select(Launch.rules_version_id))) == [1]


def test_replay_command_dry_run_writes_nothing(
    sessions: sessionmaker[Session], database_url: str, rules_file: Path
) -> None:
    store(sessions, fixture_body("status_lead"), THEN, CHATS_ONLY)

    result = cli(database_url, rules_file, "replay", "--since", "2026-11-01", "--dry-run")

    assert result.exit_code == 0
    assert result.output.splitlines()[0] == "dry run, nothing written: 1 deliveries replayed"
    assert count(sessions, Launch) == 0


def test_replay_command_needs_since_and_rejects_a_bad_one(
    database_url: str, rules_file: Path
) -> None:
    missing = cli(database_url, rules_file, "replay")
    bad = cli(database_url, rules_file, "replay", "--since", "last week")

    assert (missing.exit_code, bad.exit_code) == (2, 2)
    assert "Missing option '--since'" in missing.output
    assert "Invalid value for '--since': expected a duration such as '2h'" in bad.output


def test_replay_command_with_a_broken_rules_file_stops_before_touching_the_database(
    database_url: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nrules: [{name: x}]\n")

    result = cli(database_url, broken, "replay", "--since", "1d")

    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {broken}: ")


def test_rules_diff_command_compares_the_rules_in_use_with_a_new_file(
    sessions: sessionmaker[Session], database_url: str, rules_file: Path, tmp_path: Path
) -> None:
    store(sessions, fixture_body("add_talk"), THEN)
    new = tmp_path / "new.yaml"
    new.write_text(NEW_RULES)

    result = cli(
        database_url, rules_file, "rules", "diff", str(new), "--since", THEN.date().isoformat()
    )

    assert (result.exit_code, result.output) == (
        1,  # the files differ, like diff(1)
        f"{rules_file} → {new}: 1 stored deliveries compared\n"
        f"  {rules_file}: not stored\n"
        f"  {new}: not stored\n"
        "  new-chat: 0 kept, 1 added, 1 dropped\n"
        "+ new-chat: bot 909 on contact 93589657 (talk:106564:add)\n"
        "- new-chat: bot 202 on contact 93589657 (talk:106564:add)\n",
    )
