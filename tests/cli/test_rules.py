"""`automation rules check` and `automation rules test`: files in, text out, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from automation.cli import main
from tests.cli.script import run_script

REPO = Path(__file__).parents[2]
WEBHOOKS = "tests/fixtures/webhooks"
CASES = "tests/fixtures/cases"
#: Tuesday 2024-10-01, 12:00 in Moscow: office hours.
AT = "2024-10-01T09:00:00"

CONFLICTING = """\
version: 1
rules:
  - {name: welcome, on: lead.added, launch: {bot_id: 1, entity: lead}}
  - {name: upsell, on: lead.added, launch: {bot_id: 2, entity: lead}}
"""
#: The same two rules with the one-bot-per-chat guard off: now they conflict.
UNGUARDED = CONFLICTING.replace("rules:", "defaults: {one_bot_per_chat: 0s}\nrules:")
UNKNOWN_FIELD = """\
version: 1
rules:
  - name: welcome
    on: lead.added
    when: {utm_campaign: spring}
    launch: {bot_id: 1, entity: lead}
"""
BROKEN = """\
version: 1
rules:
  - name: welcome
    on: lead.added
    launch: {bot_id: abc, entity: lead}
"""


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the repository root, as a user would, so paths print as typed."""
    monkeypatch.chdir(REPO)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["rules", *args])


# --------------------------------------------------------------------------- check


def test_check_prints_rules_per_event_type_and_exits_0() -> None:
    result = run("check", "rules.yaml")

    assert (result.exit_code, result.output) == (
        0,
        "rules.yaml: ok, 3 rules (0 disabled)\n"
        "  lead.status_changed  1\n"
        "  talk.added           1\n"
        "  message.added        1\n",
    )


def test_check_reads_rules_file_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(CONFLICTING.replace("upsell, on: lead.added", "upsell, on: talk.added"))
    monkeypatch.setenv("RULES_FILE", str(path))

    result = run("check")

    assert result.output.splitlines()[0] == f"{path}: ok, 2 rules (0 disabled)"


def test_check_reads_rules_file_from_dot_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(REPO / "rules.yaml", tmp_path / "custom.yaml")
    (tmp_path / ".env").write_text("RULES_FILE=custom.yaml\n")
    monkeypatch.chdir(tmp_path)

    result = run("check")

    assert result.output.splitlines()[0] == "custom.yaml: ok, 3 rules (0 disabled)"


def test_check_defaults_to_rules_yaml_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(REPO / "rules.yaml", tmp_path / "rules.yaml")
    monkeypatch.chdir(tmp_path)

    result = run("check")

    assert (result.exit_code, result.output.splitlines()[0]) == (
        0,
        "rules.yaml: ok, 3 rules (0 disabled)",
    )


def test_check_warns_about_conflicts_without_failing(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(UNGUARDED)

    result = run("check", str(path))

    assert result.exit_code == 0
    assert result.output.splitlines()[-1] == (
        "warning: rules 'welcome' (bot 1) and 'upsell' (bot 2) can both start on the same "
        "lead for lead.added; the second bot interrupts the first. one_bot_per_chat is 0s "
        "on 'upsell': set it (e.g. 10m) to make the later one yield (if_busy: skip) or wait "
        "(if_busy: wait); or make their conditions exclusive, or add stop: true to 'welcome'"
    )


def test_check_warns_about_a_field_no_event_is_known_to_carry_without_failing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(UNKNOWN_FIELD)

    result = run("check", str(path))

    assert result.exit_code == 0
    assert result.output.splitlines()[-1] == (
        f'warning: {path}:5:12: rules[0] (name="welcome"): when.utm_campaign: '
        "'utm_campaign' is not a field lead.added events are known to carry (the "
        "condition holds only if amoCRM sends it)"
    )


@pytest.mark.parametrize("text", [UNKNOWN_FIELD, UNGUARDED], ids=["field", "conflict"])
def test_strict_check_fails_on_warnings(tmp_path: Path, text: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)

    result = run("check", "--strict", str(path))

    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith("warning: ")


def test_strict_check_of_a_file_without_warnings_passes() -> None:
    assert run("check", "--strict", "rules.yaml").exit_code == 0


def test_check_is_silent_about_conflicts_the_guard_resolves(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(CONFLICTING)

    result = run("check", str(path))

    assert (result.exit_code, result.output.splitlines()) == (
        0,
        [f"{path}: ok, 2 rules (0 disabled)", "  lead.added  2"],
    )


def test_check_of_the_example_rules_prints_no_warning() -> None:
    result = run("check", "rules.yaml")

    assert result.exit_code == 0
    assert "warning" not in result.output


def test_check_lists_every_error_with_file_and_line_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BROKEN)

    result = run("check", str(path), "rules.yaml")

    assert result.exit_code == 1
    assert result.stderr == (
        f"{path}: 1 error\n"
        f'{path}:5:14: rules[0] (name="welcome"): launch.bot_id: must be a positive '
        "integer, got 'abc'\n"
    )
    assert result.stdout.splitlines()[0] == "rules.yaml: ok, 3 rules (0 disabled)"


def test_check_of_a_missing_file_fails_without_a_traceback(tmp_path: Path) -> None:
    result = run("check", str(tmp_path / "absent.yaml"))

    assert (result.exit_code, result.stderr) == (
        1,
        f"{tmp_path / 'absent.yaml'}: 1 error\n"
        f"{tmp_path / 'absent.yaml'}: cannot read: No such file or directory\n",
    )


# ---------------------------------------------------------------------------- test


def without_data(output: str) -> list[str]:
    """Output lines, less the decoded event data (asserted separately)."""
    return [line for line in output.splitlines() if not line.startswith("  data: ")]


def test_payload_shows_the_event_the_decisions_and_the_launch() -> None:
    result = run("test", "--at", AT, f"{WEBHOOKS}/status_lead.form")

    assert result.exit_code == 0
    assert without_data(result.output) == [
        f"{WEBHOOKS}/status_lead.form: 1 event(s), at 2024-10-01T09:00:00+00:00",
        "event lead.status_changed (leads[status][0]) lead=27754599",
        "  rule qualified-lead-welcome: matched; delayed 1m",
        "  launch qualified-lead-welcome: bot 101 on lead 27754599, "
        "not before 2024-10-01T09:01:00+00:00, cooldown 1d",
    ]


def test_payload_output_includes_the_decoded_event_data() -> None:
    result = run("test", "--at", AT, f"{WEBHOOKS}/status_lead.form")

    [data_line] = [line for line in result.output.splitlines() if line.startswith("  data: ")]
    data = json.loads(data_line.removeprefix("  data: "))
    assert (data["id"], data["status_id"], data["tags"]) == (
        27754599,
        59936202,
        [{"id": 276241, "name": "site"}],
    )


def test_rules_that_do_not_match_say_why_and_other_event_types_say_none_listen() -> None:
    result = run("test", "--at", AT, f"{WEBHOOKS}/update_lead.form")

    assert without_data(result.output) == [
        f"{WEBHOOKS}/update_lead.form: 2 event(s), at 2024-10-01T09:00:00+00:00",
        "event lead.updated (leads[update][0]) lead=27754599",
        "  no rules listen to lead.updated",
        "event lead.status_changed (leads[update][0]) lead=27754599",
        "  rule qualified-lead-welcome: status_id: 59936206 is not 59936202",
    ]


def test_at_moves_the_clock_for_active_hours() -> None:
    saturday_noon_moscow = "2024-10-05T12:00:00+03:00"

    result = run("test", "--at", saturday_noon_moscow, f"{WEBHOOKS}/add_message.form")

    assert without_data(result.output)[-2:] == [
        "  rule after-hours-reply: matched",
        "  launch after-hours-reply: bot 103 on contact 93589657, "
        "not before 2024-10-05T09:00:00+00:00, cooldown 12h",
    ]


def test_json_payload_is_recognised_by_its_first_brace(tmp_path: Path) -> None:
    payload = tmp_path / "status.json"
    payload.write_text(
        json.dumps(
            {
                "account": {"id": "30112233"},
                "leads": {
                    "status": [{"id": "5", "status_id": "59936202", "pipeline_id": "7173574"}]
                },
            }
        )
    )

    result = run("test", "--at", AT, str(payload))

    assert without_data(result.output)[-1] == (
        "  launch qualified-lead-welcome: bot 101 on lead 5, "
        "not before 2024-10-01T09:01:00+00:00, cooldown 1d"
    )


def test_rules_option_chooses_the_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(CONFLICTING)

    result = run("test", "--rules", str(path), "--at", AT, f"{WEBHOOKS}/add_lead.form")

    assert without_data(result.output)[2:] == [
        "  rule welcome: matched",
        "  rule upsell: matched",
        "  launch welcome: bot 1 on lead 27754611, not before 2024-10-01T09:00:00+00:00, "
        "cooldown none",
        "  launch upsell: bot 2 on lead 27754611, not before 2024-10-01T09:00:00+00:00, "
        "cooldown none; busy: yielded to the launch of bot 1 (rule 'welcome') on lead "
        "27754611, due 2024-10-01T09:00:00+00:00 (one_bot_per_chat: 10m, if_busy: skip)",
    ]


def test_payloads_given_together_show_one_bot_per_chat_across_them() -> None:
    """The example rules at night: the first message's talk starts the greeting, and
    the after-hours reply yields to it."""
    talk, message = f"{WEBHOOKS}/add_talk.form", f"{WEBHOOKS}/add_message.form"

    result = run("test", "--at", "2024-10-01T20:00:00", talk, message)

    launches = [line for line in result.output.splitlines() if line.startswith("  launch ")]
    assert launches == [
        "  launch new-chat-greeting: bot 102 on contact 93589657, not before "
        "2024-10-01T20:00:00+00:00, cooldown 1d",
        "  launch after-hours-reply: bot 103 on contact 93589657, not before "
        "2024-10-01T20:00:00+00:00, cooldown 12h; busy: yielded to the launch of bot 102 "
        "(rule 'new-chat-greeting') on contact 93589657, due 2024-10-01T20:00:00+00:00 "
        "(one_bot_per_chat: 10m, if_busy: skip)",
    ]


def test_test_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO / "rules.yaml", tmp_path / "rules.yaml")
    shutil.copy(REPO / WEBHOOKS / "status_lead.form", tmp_path / "status_lead.form")
    monkeypatch.chdir(tmp_path)
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")}

    result = run("test", "status_lead.form")

    assert result.exit_code == 0
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")} == before


def test_invalid_at_is_a_usage_error() -> None:
    result = run("test", "--at", "tomorrow", f"{WEBHOOKS}/status_lead.form")

    assert result.exit_code == 2
    assert (
        "Invalid value for '--at': must be an ISO 8601 time such as "
        "'2024-10-01T09:00:00+03:00', got 'tomorrow'" in result.stderr
    )


def test_test_needs_payloads_or_cases_but_not_both() -> None:
    neither = run("test")
    both = run("test", "--cases", f"{CASES}/example.yaml", f"{WEBHOOKS}/add_talk.form")

    assert (neither.exit_code, both.exit_code) == (2, 2)
    assert "give payload files or --delivery ID, or --cases FILE alone" in neither.stderr


def test_unreadable_payload_is_an_error_without_traceback() -> None:
    result = run("test", f"{WEBHOOKS}/absent.form")

    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {WEBHOOKS}/absent.form: cannot read: No such file or directory\n",
    )


def test_payload_that_is_not_a_webhook_is_an_error(tmp_path: Path) -> None:
    payload = tmp_path / "bad.json"
    payload.write_text("{not json")

    result = run("test", str(payload))

    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {payload}: body is not valid JSON: Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1)\n",
    )


def test_broken_rules_file_stops_the_test_with_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BROKEN)

    result = run("test", "--rules", str(path), f"{WEBHOOKS}/status_lead.form")

    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {path}: 1 error\n"
        f'{path}:5:14: rules[0] (name="welcome"): launch.bot_id: must be a positive '
        "integer, got 'abc'\n",
    )


# --------------------------------------------------------------------------- cases


def test_passing_cases_print_pass_and_exit_0() -> None:
    result = run("test", "--cases", f"{CASES}/example.yaml")

    assert (result.exit_code, result.output) == (
        0,
        "PASS  lead reaching Qualified starts the welcome bot a minute later\n"
        "PASS  a new chat greets the contact\n"
        "PASS  a message during office hours starts nothing\n"
        "PASS  a message on Saturday gets the after-hours reply\n"
        "PASS  a lead moved to another stage starts nothing\n"
        "5 cases: 5 passed, 0 failed\n",
    )


def test_failing_cases_print_a_diff_and_exit_1() -> None:
    result = run("test", "--cases", f"{CASES}/failing.yaml")

    assert (result.exit_code, result.output) == (
        1,
        "PASS  a new chat greets the contact\n"
        "FAIL  the welcome bot has the wrong id\n"
        "    --- expected\n"
        "    +++ actual\n"
        "    - {rule: qualified-lead-welcome, bot_id: 999, entity: lead, entity_id: 27754599}\n"
        "    + {rule: qualified-lead-welcome, bot_id: 101, entity: lead, entity_id: 27754599, "
        "not_before: 2024-10-01T09:01:00+00:00}\n"
        "FAIL  a broken body\n"
        "    payload: body is not valid JSON: Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1)\n"
        "3 cases: 1 passed, 2 failed\n",
    )


def test_expected_not_before_must_match_too(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        f"rules: {REPO / 'rules.yaml'}\n"
        "cases:\n"
        f"  - name: late\n    payload: {REPO / WEBHOOKS / 'status_lead.form'}\n"
        "    at: '2024-10-01T09:00:00Z'\n"
        "    expect: [{rule: qualified-lead-welcome, bot_id: 101, entity: lead,"
        " entity_id: 27754599, not_before: '2024-10-01T09:00:00Z'}]\n"
    )

    result = run("test", "--cases", str(cases))

    assert result.exit_code == 1
    assert result.output.splitlines()[3:5] == [
        "    - {rule: qualified-lead-welcome, bot_id: 101, entity: lead, entity_id: 27754599, "
        "not_before: 2024-10-01T09:00:00+00:00}",
        "    + {rule: qualified-lead-welcome, bot_id: 101, entity: lead, entity_id: 27754599, "
        "not_before: 2024-10-01T09:01:00+00:00}",
    ]


def test_rules_option_overrides_the_rules_named_in_the_cases_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text((REPO / "rules.yaml").read_text().replace("bot_id: 102", "bot_id: 902"))

    result = run("test", "--rules", str(path), "--cases", f"{CASES}/example.yaml")

    assert (result.exit_code, result.output.splitlines()[-1]) == (
        1,
        "5 cases: 4 passed, 1 failed",
    )


def test_invalid_cases_file_lists_every_problem_with_its_line() -> None:
    result = run("test", "--cases", f"{CASES}/invalid.yaml")

    path = f"{CASES}/invalid.yaml"
    assert (result.exit_code, result.stderr.splitlines()) == (
        1,
        [
            f"Error: {path}: 4 errors",
            f'{path}:4:5: cases[0] (name="both a file and a body"): set exactly one of '
            "'payload' (a file) and 'body' (inline)",
            f"{path}:8:5: cases[1] (name=\"no expectation\"): missing required key 'expect'",
            f'{path}:11:5: cases[2] (name="a missing file"): payload: cannot read '
            "'../webhooks/nope.form': No such file or directory",
            f'{path}:15:25: cases[3] (name="a bad bot id"): expect[0].bot_id: must be a '
            "positive integer, got 'one'",
        ],
    )


# ---------------------------------------------------------------------- subprocess


def run_rules_script(*args: str) -> subprocess.CompletedProcess[str]:
    """`automation rules ARGS` from the repository root, RULES_FILE unset."""
    env = {key: value for key, value in os.environ.items() if key != "RULES_FILE"}
    return run_script("rules", *args, env=env, cwd=REPO)


def test_console_script_checks_the_example_rules() -> None:
    finished = run_rules_script("check", "rules.yaml")

    assert (finished.returncode, finished.stdout.splitlines()[0], finished.stderr) == (
        0,
        "rules.yaml: ok, 3 rules (0 disabled)",
        "",
    )


def test_console_script_shows_the_launch_for_a_stage_change() -> None:
    finished = run_rules_script("test", "--at", AT, f"{WEBHOOKS}/status_lead.form")

    assert finished.returncode == 0
    assert without_data(finished.stdout)[-1] == (
        "  launch qualified-lead-welcome: bot 101 on lead 27754599, "
        "not before 2024-10-01T09:01:00+00:00, cooldown 1d"
    )


def test_console_script_fails_cleanly_on_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BROKEN)

    finished = run_rules_script("check", str(path))

    assert finished.returncode == 1
    assert "Traceback" not in finished.stderr
    assert finished.stderr.splitlines()[-1].endswith("must be a positive integer, got 'abc'")


# ------------------------------------------------------------------ stored deliveries


@pytest.fixture
def operator_env(database_url: str, rules_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The operator's shell: DATABASE_URL and RULES_FILE name what the server uses."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("RULES_FILE", str(rules_file))
    return rules_file


@pytest.fixture
def stored_webhook(client: Any, webhook_body: Callable[[str], bytes]) -> Callable[[str], int]:
    """Post a webhook fixture by name to the server; returns the id it was stored as."""

    def post(name: str) -> int:
        answer = client.post(
            "/webhooks/amocrm/s3cret",
            data=webhook_body(name),
            content_type="application/x-www-form-urlencoded",
        )
        assert answer.status_code == 200, answer.text
        delivery_id: int = answer.json["delivery_id"]
        return delivery_id

    return post


def test_a_stored_delivery_is_judged_as_of_its_arrival(
    stored_webhook: Callable[[str], int], operator_env: Path
) -> None:
    """README, "A bot did not start": run the stored webhook through the rules."""
    delivery_id = stored_webhook("status_lead")

    result = run("test", "--delivery", str(delivery_id))

    assert result.exit_code == 0, result.output
    which, first = result.output.splitlines()[:2]
    assert which.startswith(f"delivery #{delivery_id}: rules version #1 (sha256 ")
    assert first.startswith(f"delivery #{delivery_id}: 1 event(s), at 20")
    assert "rule qualified: matched" in result.output
    assert "launch " in result.output


def test_a_stored_delivery_is_judged_by_the_stored_version_unless_current_is_given(
    stored_webhook: Callable[[str], int], operator_env: Path
) -> None:
    """The issue's example: a rule added after the webhook must not claim it matched."""
    delivery_id = stored_webhook("add_talk")
    operator_env.write_text(
        operator_env.read_text() + "  - name: new-chat-greeting\n    on: talk.added\n"
        "    launch: {bot_id: 909, entity: contact}\n"
    )

    stored = run("test", "--delivery", str(delivery_id))
    today = run("test", "--delivery", str(delivery_id), "--current")

    assert stored.exit_code == 0 and today.exit_code == 0, stored.output + today.output
    assert "new-chat-greeting" not in stored.output
    assert "first loaded 20" in stored.output.splitlines()[0]
    assert "rule new-chat-greeting: matched" in today.output
    assert "--current: judged with today's rules file" in today.output.splitlines()[0]


def test_a_delivery_stored_before_versions_is_judged_with_todays_file_and_says_so(
    stored_webhook: Callable[[str], int], app: Any, operator_env: Path
) -> None:
    from automation.store.models import Delivery

    delivery_id = stored_webhook("status_lead")
    with app.extensions["automation"].engine.begin() as connection:
        connection.execute(Delivery.__table__.update().values(rules_version_id=None))

    result = run("test", "--delivery", str(delivery_id))

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].endswith(
        "stored before rules versions were recorded: judged with today's file"
    )
    assert "rule qualified: matched" in result.output


def test_a_delivery_that_is_not_stored_is_a_clean_error(operator_env: Path) -> None:
    result = run("test", "--delivery", "424242")

    assert result.exit_code == 1
    assert "delivery #424242: not stored (never, or pruned since)" in result.output


def test_status_names_the_stored_version_of_the_rules_file(client: Any, operator_env: Path) -> None:
    stored = run("status")
    operator_env.write_text(operator_env.read_text().replace("bot_id: 101", "bot_id: 111"))
    edited = run("status")

    assert stored.exit_code == 0, stored.output
    assert stored.output.splitlines()[1].startswith("  stored as version #1 (sha256 ")
    assert "  not stored yet: no server has loaded this content" in edited.output
    assert edited.output.splitlines()[-1].startswith("version #1 (sha256 ")
