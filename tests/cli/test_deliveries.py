"""`automation deliveries list|show`: find the webhooks about a lead, and explain one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner, Result

from automation.cli import main

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def deliveries(
    client: Any,
    database_url: str,
    rules_file: Path,
    webhook_body: Callable[[str], bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> list[int]:
    """Three webhooks: a stage the rules ignore and the qualifying one for lead
    27754599, and a chat on another lead."""
    bodies = [
        urlencode({"leads[status][0][id]": "27754599", "leads[status][0][status_id]": "1"}),
        webhook_body("status_lead"),
        webhook_body("add_talk"),
    ]
    ids = [
        client.post("/webhooks/amocrm/s3cret", data=body, content_type=FORM).json["delivery_id"]
        for body in bodies
    ]
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("RULES_FILE", str(rules_file))
    return ids


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["deliveries", *args])


def test_list_by_entity_finds_every_webhook_about_the_lead_newest_first(
    deliveries: list[int],
) -> None:
    result = run("list", "--entity-id", "27754599", "--json")

    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["id"] for row in rows] == [deliveries[1], deliveries[0]]
    assert [row["launches"] for row in rows] == [1, 0]
    assert {"id", "received_at", "status", "events", "launches"} <= rows[0].keys()
    assert rows[0]["entities"] == [{"type": "lead", "id": 27754599}]


def test_list_finds_a_chat_by_its_contact_and_prints_a_table(deliveries: list[int]) -> None:
    result = run("list", "--entity-id", "93589657")

    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()
    assert header.split()[:3] == ["id", "received", "(UTC)"]
    assert row.startswith(f"{deliveries[2]} ") and "chat_contact 93589657" in row


def test_list_filters_by_status_time_and_limit(deliveries: list[int]) -> None:
    assert json.loads(run("list", "--status", "unrecognized", "--json").output) == []
    assert json.loads(run("list", "--since", "2099-01-01", "--json").output) == []
    [newest] = json.loads(run("list", "--limit", "1", "--json").output)
    assert newest["id"] == deliveries[2]
    assert run("list", "--entity-id", "5").output == "no deliveries match\n"


def test_show_explains_a_delivery_that_matched_nothing(deliveries: list[int]) -> None:
    result = run("show", str(deliveries[0]))

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"delivery #{deliveries[0]} received ")
    assert lines[0].endswith("accepted: 1 event(s), 0 launch(es), 0 duplicate(s)")
    assert lines[2].startswith("  rules: version #1 (sha256 ")
    assert "  rule qualified: conditions_failed" in lines
    assert "      status_id: expected 59936202, got 1" in lines
    assert lines[-1] == "launches: none"


def test_show_json_is_the_explanation_the_api_answers(deliveries: list[int], app: Any) -> None:
    result = run("show", str(deliveries[1]), "--json")

    explanation = json.loads(result.output)
    [event] = explanation["events"]
    [verdict] = event["rules"]
    assert (verdict["rule"], verdict["verdict"]) == ("qualified", "launched")
    assert [launch["id"] for launch in explanation["launches"]] == [verdict["launch_id"]]


def test_show_of_a_delivery_that_is_not_stored_is_a_clean_error(deliveries: list[int]) -> None:
    result = run("show", "424242")

    assert result.exit_code == 1
    assert "delivery #424242: not stored (never, or pruned since)" in result.output


def test_show_of_a_large_webhook_prints_a_window_of_events_and_counts_them_all(
    client: Any, database_url: str, rules_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = {}
    for i in range(120):
        fields |= {f"leads[status][{i}][id]": 27_000_000 + i, f"leads[status][{i}][status_id]": 1}
    answer = client.post("/webhooks/amocrm/s3cret", data=urlencode(fields), content_type=FORM)
    delivery = str(answer.json["delivery_id"])
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("RULES_FILE", str(rules_file))

    shown = run("show", delivery)
    window = run("show", delivery, "--events", "100:102")
    one = run("show", delivery, "--event", "7")
    bad = run("show", delivery, "--events", "5:5")

    assert shown.exit_code == 0, shown.output
    assert shown.output.count("\nevent ") == 50
    assert (
        "  entities: lead 27000000, lead 27000001, lead 27000002, lead 27000003, " in shown.output
    )
    assert "lead 27000004 (+115 more)\n" in shown.output
    assert "events 0-49 shown of 120 (see others with --events FROM:TO or --event N)" in (
        shown.output
    )
    assert "all 120 events' rule verdicts: conditions_failed 120; 0 event(s) no rule" in (
        shown.output
    )
    events = [line for line in window.output.splitlines() if line.startswith("event ")]
    assert [line.split()[1] for line in events] == ["100", "101"]
    assert [line.split()[1] for line in one.output.splitlines() if line.startswith("event ")] == [
        "7"
    ]
    assert bad.exit_code == 2 and "expected FROM:TO with 0 <= FROM < TO, got '5:5'" in bad.output
