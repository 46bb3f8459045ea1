"""`when:` conditions (`rules.conditions`) on real payload shapes: custom fields by
their select option ids (`enum`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from automation.events.payloads import Event
from automation.rules.load import decode_payload, load_rules

NOW = datetime(2024, 10, 1, 9, 0, tzinfo=UTC)

Body = Callable[[str], bytes]


def reason(condition: str, event: Event) -> str | None:
    """Why a rule with `when: {custom_fields: {condition}}` does not match, or None."""
    rules = load_rules(
        "version: 1\nrules:\n  - name: r\n    on: lead.status_changed\n"
        f"    when: {{custom_fields: {condition}}}\n    launch: {{bot_id: 1, entity: lead}}\n"
    )
    [decision] = rules.explain(event, NOW)
    return None if decision.matched else decision.reason


@pytest.fixture
def status_lead(webhook_body: Body) -> Event:
    """The stage change whose field 66339 (Источник) is the option 139517 (Сайт)."""
    return decode_payload(webhook_body("status_lead"), NOW).events[0]


@pytest.mark.parametrize(
    "condition",
    [
        "{66339: {enum: 139517}}",
        "{66339: {enum: '139517'}}",
        "{Источник: {enum: [139519, 139517]}}",
        "{66339: {enum: {not: 139519}}}",
        "{66339: {enum: 139517, eq: Сайт}}",
    ],
)
def test_select_option_matches_by_its_id(condition: str, status_lead: Event) -> None:
    assert reason(condition, status_lead) is None


def test_other_select_option_id_says_which_ids_the_field_has(status_lead: Event) -> None:
    assert reason("{66339: {enum: 139519}}", status_lead) == (
        "custom_fields[66339].enum: [139517] is not 139519"
    )


def test_option_id_and_value_must_both_hold(status_lead: Event) -> None:
    assert reason("{66339: {enum: 139517, not: Сайт}}", status_lead) == (
        "custom_fields[66339]: ['Сайт'] matches not: 'Сайт'"
    )


def test_field_without_options_has_no_option_ids(status_lead: Event) -> None:
    assert reason("{Город: {enum: 139517}}", status_lead) == (
        "custom_fields['Город'].enum: [] is not 139517"
    )


def test_absent_field_has_no_option_ids(status_lead: Event) -> None:
    assert reason("{999: {enum: 139517}}", status_lead) == "custom_fields[999].enum: missing"
