"""Condition fields held against the fields each event type carries (`rules.fieldcheck`)."""

from __future__ import annotations

from textwrap import dedent, indent

import pytest

from automation.errors import RulesError
from automation.rules.load import RuleSet, load_rules


def rules_with(on: str, when: str) -> RuleSet:
    rule = f"- name: r\n  on: {on}\n  when: {when}\n  launch: {{bot_id: 1, entity: lead}}\n"
    return load_rules("version: 1\nrules:\n" + indent(dedent(rule), "  "), "r.yaml")


def error_of(on: str, when: str) -> str:
    with pytest.raises(RulesError) as raised:
        rules_with(on, when)
    [problem] = raised.value.problems
    return problem.split(": ", 3)[-1]


@pytest.mark.parametrize(
    ("on", "when"),
    [
        ("lead.status_changed", "{status_id: 142, tags: vip, custom_fields: {Город: Москва}}"),
        ("lead.status_changed", "{tags.0.name: vip, lead.price: {gt: 1}}"),
        ("message.added", "{message.type: outgoing, author.type: user, origin: telegram}"),
        ("talk.added", "{is_in_work: false, origin: waba}"),
        ("'*'", "{status_id: 142}"),
    ],
)
def test_fields_the_events_carry_pass_without_warnings(on: str, when: str) -> None:
    assert rules_with(on, when).warnings == ()


def test_misspelt_field_with_a_wildcard_is_an_error_naming_the_pattern() -> None:
    assert error_of("'lead.*'", "{pipeline: 7}") == (
        "unknown field 'pipeline' for lead.*; did you mean 'pipeline_id'?"
    )


def test_misspelt_field_of_an_event_without_a_field_list_is_only_a_warning() -> None:
    ruleset = rules_with("[task.added, lead.added]", "{statu_id: 5}")

    [warning] = ruleset.warnings
    assert warning.endswith(
        "'statu_id' is not a field task.added, lead.added events are known to carry (the "
        "condition holds only if amoCRM sends it); did you mean 'status_id'?"
    )


def test_events_without_any_field_list_are_not_checked() -> None:
    rule = "- name: r\n  on: customer.added\n  when: {next_price: {gt: 5}}\n"
    rule += "  launch: {bot_id: 1, entity: customer}\n"

    assert load_rules("version: 1\nrules:\n" + indent(rule, "  ")).warnings == ()


def test_field_of_another_family_is_a_warning_not_an_error() -> None:
    [warning] = rules_with("lead.added", "{is_in_work: true}").warnings

    assert "'is_in_work' is not a field lead.added events are known to carry" in warning
