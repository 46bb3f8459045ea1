"""`automation launches list|show|retry|cancel` through click's CliRunner and as a real
process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from automation.cli import main
from automation.cli.launches import LAUNCH_STATUSES
from automation.store.models import Launch
from automation.store.states import LaunchStatus
from tests.cli.script import run_script
from tests.store.test_launchlog import NOW, fixture_body, send, status_change, store


@pytest.fixture
def env(database_url: str, rules_file: Path) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "RULES_FILE": str(rules_file), "WEBHOOK_SECRET": "s3cret"}


def run(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["launches", *args], env=env, input=input)


def statuses(sessions: sessionmaker[Session]) -> list[LaunchStatus]:
    with sessions() as session:
        return list(session.scalars(select(Launch.status).order_by(Launch.id)))


def make(sessions: sessionmaker[Session], status: LaunchStatus, *ids: int) -> None:
    with sessions.begin() as session:
        session.execute(
            update(Launch).where(Launch.id.in_(ids)).values(status=status, settled_at=NOW)
        )


def leads(sessions: sessionmaker[Session], count: int) -> None:
    """`count` pending launches of rule `qualified`, on leads 1…count."""
    for lead in range(1, count + 1):
        store(sessions, status_change(lead))


def test_status_choices_are_the_launch_statuses() -> None:
    assert tuple(status.value for status in LaunchStatus) == LAUNCH_STATUSES


# ----------------------------------------------------------------------------- list


def test_list_prints_a_table_newest_first(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    store(sessions, fixture_body("status_lead"))
    store(sessions, fixture_body("add_talk"))

    result = run(env, "list")

    assert (result.exit_code, result.output) == (
        0,
        "ID  STATUS   RULE       BOT  ENTITY            CREATED               DUE"
        "                   ATTEMPTS  REASON\n"
        "2   pending  new-chat   202  contact 93589657  2026-11-25 12:00:00Z  2026-11-25 12:00:00Z"
        "  0\n"
        "1   pending  qualified  101  lead 27754599     2026-11-25 12:00:00Z  2026-11-25 12:00:00Z"
        "  0\n",
    )


def test_list_cut_by_its_limit_says_how_many_match_in_all(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    leads(sessions, 5)

    cut = run(env, "list", "--limit", "2")
    whole = run(env, "list", "--limit", "5")

    assert cut.output.splitlines()[-1] == "2 of 5 launches, newest first; --limit shows more"
    assert len(whole.output.splitlines()) == 6  # the header and five launches, no footer


def test_list_and_show_print_times_in_the_zone_of_tz_or_display_timezone(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    store(sessions, fixture_body("status_lead"))

    by_option = run(env, "list", "--tz", "Europe/Moscow")
    by_setting = run({**env, "DISPLAY_TIMEZONE": "Asia/Yekaterinburg"}, "show", "1")
    wrong = run(env, "list", "--tz", "MSK")

    assert "2026-11-25 15:00:00+03:00" in by_option.output
    assert "created:    2026-11-25 17:00:00+05:00" in by_setting.output
    assert wrong.exit_code == 2
    assert "expected an IANA time zone such as UTC or Europe/Moscow, got 'MSK'" in wrong.output


def test_list_json_is_one_array_of_view_rows(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    store(sessions, fixture_body("status_lead"))
    send(sessions, NOW)

    result = run(env, "list", "--json")

    [row] = json.loads(result.output)
    assert (row["id"], row["status"], row["entity_kind"], row["call_status_code"]) == (
        1,
        "sent",
        "lead",
        202,
    )
    assert row["settled_at"] == "2026-11-25T12:00:01+00:00"


def test_list_filters_combine(sessions: sessionmaker[Session], env: dict[str, str]) -> None:
    leads(sessions, 3)
    store(sessions, fixture_body("add_talk"))
    make(sessions, LaunchStatus.FAILED, 1, 2, 4)

    def ids(*args: str) -> list[int]:
        result = run(env, "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [row["id"] for row in json.loads(result.output)]

    assert ids("--status", "failed") == [4, 2, 1]
    assert ids("--status", "failed", "--status", "pending", "--limit", "2") == [4, 3]
    assert ids("--status", "failed", "--rule", "qualified") == [2, 1]
    assert ids("--bot", "202") == [4]
    assert ids("--entity-id", "3") == [3]
    assert ids("--since", "2026-11-25T12:00:00Z", "--until", "2026-11-25T12:00:01Z") == [4, 3, 2, 1]
    assert ids("--until", "2026-11-25") == []


def test_list_says_so_when_nothing_matches(env: dict[str, str]) -> None:
    result = run(env, "list", "--bot", "999")

    assert (result.exit_code, result.output) == (0, "no launches match\n")


def test_list_rejects_an_unknown_status(env: dict[str, str]) -> None:
    result = run(env, "list", "--status", "done")

    assert result.exit_code == 2
    assert "Invalid value for '--status': 'done' is not one of 'pending', 'sending'" in (
        result.output
    )


def test_list_works_with_a_broken_rules_file(
    sessions: sessionmaker[Session], env: dict[str, str], tmp_path: Path
) -> None:
    store(sessions, fixture_body("status_lead"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nrules: [{name: x}]\n")

    result = run({**env, "RULES_FILE": str(broken)}, "list", "--json")

    assert result.exit_code == 0
    assert len(json.loads(result.output)) == 1


def test_unreachable_database_is_an_error_without_a_traceback(env: dict[str, str]) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:9/nowhere"

    result = run({**env, "DATABASE_URL": url}, "list")

    assert result.exit_code == 1
    assert result.output.startswith(f"Error: database {url}: ")
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- show


def test_show_tells_the_whole_story(sessions: sessionmaker[Session], env: dict[str, str]) -> None:
    store(sessions, fixture_body("status_lead"))
    call_id = send(sessions, NOW)

    result = run(env, "show", "1")

    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "launch #1: sent"
    assert "delivery #1: received 2026-11-25 12:00:00Z, account mybrand, accepted, " in (
        result.output
    )
    assert lines[-1] == f"why: sent: amoCRM accepted API call #{call_id} at 2026-11-25 12:00:01Z"


def test_show_json_is_one_object_with_delivery_and_attempts(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    store(sessions, fixture_body("status_lead"))
    send(sessions, NOW)

    story = json.loads(run(env, "show", "1", "--json").output)

    assert story["launch"]["status"] == "sent"
    assert story["source"]["received_at"] == "2026-11-25T12:00:00+00:00"
    assert [a["outcome"] for a in story["attempts"]] == ["accepted"]
    assert story["verdict"].startswith("sent: amoCRM accepted API call #")


def test_show_of_an_unknown_launch_fails_cleanly(env: dict[str, str]) -> None:
    result = run(env, "show", "9")

    assert (result.exit_code, result.output) == (1, "Error: launch #9 does not exist\n")


# ---------------------------------------------------------------------------- retry


def test_retry_by_id_prints_the_change_and_refuses_others_per_row(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    leads(sessions, 2)
    make(sessions, LaunchStatus.FAILED, 1)
    make(sessions, LaunchStatus.SENT, 2)

    result = run(env, "retry", "1", "2")

    assert result.exit_code == 1
    assert result.stdout == (
        "launch #1: failed → pending  (qualified: bot 101 on lead 1)\nretried 1 launch(es)\n"
    )
    assert result.stderr == (
        "launch #2: refused: it is sent; only failed, uncertain or cancelled launches "
        "can be retried\n"
    )
    assert statuses(sessions) == [LaunchStatus.PENDING, LaunchStatus.SENT]


def test_retrying_uncertain_launches_warns_about_messaging_customers_twice(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    leads(sessions, 2)
    make(sessions, LaunchStatus.UNCERTAIN, 1, 2)

    result = run(env, "retry", "--uncertain")

    assert result.exit_code == 0
    assert result.stderr == (
        "warning: 2 of these launches are uncertain: amoCRM may have started them already, "
        "and sending them again may message those customers twice\n"
    )
    assert statuses(sessions) == [LaunchStatus.PENDING, LaunchStatus.PENDING]


def test_retry_failed_since_leaves_older_failures_alone(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    leads(sessions, 2)
    make(sessions, LaunchStatus.FAILED, 1, 2)
    with sessions.begin() as session:
        old = datetime(2026, 11, 20, tzinfo=UTC)
        session.execute(update(Launch).where(Launch.id == 1).values(settled_at=old))

    result = run(env, "retry", "--failed", "--since", "2026-11-24")

    assert result.stdout.splitlines()[-1] == "retried 1 launch(es)"
    assert statuses(sessions) == [LaunchStatus.FAILED, LaunchStatus.PENDING]


def test_retry_of_more_than_ten_asks_first_and_no_changes_nothing(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    leads(sessions, 11)
    make(sessions, LaunchStatus.FAILED, *range(1, 12))

    result = run(env, "retry", "--failed", input="n\n")

    assert result.exit_code == 1
    assert result.output.splitlines()[:2] == [
        "would retry 11 launches:",
        "  launch #1: failed → pending  (qualified: bot 101 on lead 1)",
    ]
    assert result.output.splitlines()[-2:] == ["retry 11 launches? [y/N]: n", "Aborted!"]
    assert set(statuses(sessions)) == {LaunchStatus.FAILED}


def test_retry_of_more_than_ten_goes_ahead_on_yes(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    leads(sessions, 11)
    make(sessions, LaunchStatus.FAILED, *range(1, 12))

    answered = run(env, "retry", "--failed", input="y\n")

    assert answered.output.splitlines()[-1] == "retried 11 launch(es)"
    assert set(statuses(sessions)) == {LaunchStatus.PENDING}


def test_yes_skips_the_question(sessions: sessionmaker[Session], env: dict[str, str]) -> None:
    leads(sessions, 11)
    make(sessions, LaunchStatus.FAILED, *range(1, 12))

    result = run(env, "retry", "--failed", "--yes")

    assert "[y/N]" not in result.output
    assert set(statuses(sessions)) == {LaunchStatus.PENDING}


# --------------------------------------------------------------------------- cancel


def test_cancel_by_id_cancels_pending_and_refuses_sent(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    leads(sessions, 2)
    make(sessions, LaunchStatus.SENT, 2)

    result = run(env, "cancel", "1", "2")

    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "launch #1: pending → cancelled  (qualified: bot 101 on lead 1)",
        "cancelled 1 launch(es)",
    ]
    assert result.stderr == (
        "launch #2: refused: it is sent; only pending launches can be cancelled\n"
    )
    assert statuses(sessions) == [LaunchStatus.CANCELLED, LaunchStatus.SENT]


def test_cancel_pending_of_one_rule(sessions: sessionmaker[Session], env: dict[str, str]) -> None:
    leads(sessions, 1)
    store(sessions, fixture_body("add_talk"))

    result = run(env, "cancel", "--pending", "--rule", "new-chat")

    assert (result.exit_code, result.stdout.splitlines()[-1]) == (0, "cancelled 1 launch(es)")
    assert statuses(sessions) == [LaunchStatus.PENDING, LaunchStatus.CANCELLED]


def test_cancel_of_more_than_ten_previews_as_a_preview_and_no_changes_nothing(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    leads(sessions, 12)

    result = run(env, "cancel", "--pending", input="n\n")

    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "would cancel 12 launches:",
        *(
            f"  launch #{n}: pending → cancelled  (qualified: bot 101 on lead {n})"
            for n in range(1, 13)
        ),
        "cancel 12 launches? [y/N]: n",
        "Aborted!",
    ]
    assert set(statuses(sessions)) == {LaunchStatus.PENDING}


def test_cancel_of_more_than_ten_says_what_it_did_after_yes(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    leads(sessions, 12)

    result = run(env, "cancel", "--pending", input="y\n")

    assert result.exit_code == 0
    assert result.output.splitlines()[0] == "would cancel 12 launches:"
    assert result.output.splitlines()[-2:] == [
        "cancel 12 launches? [y/N]: y",
        "cancelled 12 launch(es)",
    ]
    assert set(statuses(sessions)) == {LaunchStatus.CANCELLED}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("retry",), "give launch IDs or --failed/--uncertain, one of the two"),
        (("retry", "1", "--failed"), "give launch IDs or --failed/--uncertain, one of the two"),
        (
            ("retry", "1", "--since", "2h"),
            "--since selects with --failed/--uncertain, not with IDs",
        ),
        (("cancel",), "give launch IDs or --pending, one of the two"),
        (("cancel", "--rule", "x"), "give launch IDs or --pending, one of the two"),
        (("cancel", "1", "--rule", "x"), "--rule selects with --pending, not with IDs"),
    ],
)
def test_retry_and_cancel_need_ids_or_a_selection_but_not_both(
    env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    result = run(env, *args)

    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: {message}"


# -------------------------------------------------------------------- real process


def test_console_script_lists_and_cancels_launches(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    store(sessions, fixture_body("status_lead"), at=datetime.now(UTC) - timedelta(minutes=5))
    process_env = {**os.environ, **env}

    listed = run_script("launches", "list", "--since", "1h", "--json", env=process_env)
    cancelled = run_script("launches", "cancel", "1", env=process_env)

    assert (listed.returncode, listed.stderr) == (0, "")
    assert [row["entity_id"] for row in json.loads(listed.stdout)] == [27754599]
    assert (cancelled.returncode, cancelled.stdout.splitlines()[-1]) == (
        0,
        "cancelled 1 launch(es)",
    )
    assert statuses(sessions) == [LaunchStatus.CANCELLED]


def test_a_moment_outside_the_calendar_is_an_option_error_not_a_traceback() -> None:
    from datetime import UTC, datetime

    from automation.times import parse_moment

    with pytest.raises(ValueError, match=r"got '0001-01-01T00:00:00\+05:00'"):
        parse_moment("0001-01-01T00:00:00+05:00", datetime.now(UTC))


# ------------------------------------------------------------ out-of-range arguments

TOO_BIG = "99999999999999999999"


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (("list", "--bot", TOO_BIG), "'--bot'"),
        (("list", "--entity-id", TOO_BIG), "'--entity-id'"),
        (("show", TOO_BIG), "'ID'"),
        (("retry", TOO_BIG), "'[ID]...'"),
        (("cancel", TOO_BIG), "'[ID]...'"),
    ],
)
def test_an_id_beyond_64_bits_is_an_option_error_not_an_overflow(
    env: dict[str, str], args: tuple[str, ...], where: str
) -> None:
    result = run(env, *args)

    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        f"Error: Invalid value for {where}: {TOO_BIG} is not in the range "
        "1<=x<=9223372036854775807."
    )


def test_a_limit_beyond_the_maximum_is_an_option_error(env: dict[str, str]) -> None:
    result = run(env, "list", "--limit", "99999999999999999999999")

    assert result.exit_code == 2
    assert "Invalid value for '--limit'" in result.output
    assert "1<=x<=10000" in result.output


def test_since_longer_than_a_year_is_fine(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    store(sessions, fixture_body("status_lead"), at=datetime.now(UTC) - timedelta(days=300))

    result = run(env, "list", "--since", "400d", "--json")

    assert result.exit_code == 0
    assert len(json.loads(result.output)) == 1


def test_since_beyond_the_calendar_says_so(env: dict[str, str]) -> None:
    result = run(env, "list", "--since", "99999999999999d")

    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: Invalid value for '--since': a duration back from now must end after "
        "the year 1, got '99999999999999d'"
    )


def test_list_with_a_rule_the_rules_do_not_have_says_so_with_the_close_name(
    env: dict[str, str],
) -> None:
    result = run(env, "list", "--rule", "qualifed")

    assert (result.exit_code, result.output) == (
        0,
        f"no launches match; no rule 'qualifed' in the rules in use ({env['RULES_FILE']}), "
        "did you mean 'qualified'?\n",
    )


def test_list_with_a_known_rule_and_no_launches_says_only_that_none_match(
    env: dict[str, str],
) -> None:
    result = run(env, "list", "--rule", "qualified")

    assert (result.exit_code, result.output) == (0, "no launches match\n")


def test_cli_actions_are_written_to_the_audit_the_console_shows(
    sessions: sessionmaker[Session], env: dict[str, str]
) -> None:
    from automation.store import audit

    leads(sessions, 2)
    make(sessions, LaunchStatus.SENT, 2)
    run(env, "cancel", "1", "2")
    store(sessions, fixture_body("add_talk"))
    run(env, "cancel", "--pending", "--rule", "new-chat")

    with sessions() as session:
        first, second = reversed(audit.recent(session))
        trail = audit.for_launch(session, 1)
    assert (first.actor, first.action, first.target) == ("cli", "cancel", "launch #1, #2")
    assert (first.requested, first.changed) == (1, 1)
    assert second.target == "every pending launch of rule 'new-chat'"
    assert [entry.id for entry in trail] == [first.id]
