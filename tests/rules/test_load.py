"""Rules: validation messages, conditions, launches, active hours, conflicts, reloading."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from textwrap import dedent, indent
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from automation.errors import RulesError
from automation.events.payloads import Account, Event
from automation.rules.load import (
    ActiveHours,
    Decision,
    PlannedLaunch,
    RuleSet,
    RulesLoader,
    Window,
    decode_payload,
    format_duration,
    load_rules,
    load_rules_file,
    parse_duration,
)
from tests.conftest import FakeClock

FIXTURES = Path(__file__).parents[1] / "fixtures"
REPO = Path(__file__).parents[2]
#: Tuesday 2024-10-01, 12:00 in Moscow.
NOW = datetime(2024, 10, 1, 9, 0, tzinfo=UTC)
LEAD = 27754599  # the lead of status_lead.form
CHAT_LEAD, CHAT_CONTACT = 27754620, 93589657  # lead and contact of the chat fixtures

Body = Callable[[str], bytes]


def compile_rules(rules: str, defaults: str = "") -> RuleSet:
    """A rules file from the YAML of its rules (and defaults), indented for us."""
    text = "version: 1\n"
    if defaults:
        text += "defaults:\n" + indent(dedent(defaults), "  ")
    return load_rules(text + "rules:\n" + indent(dedent(rules), "  "))


def first_event(body: bytes) -> Event:
    return decode_payload(body, NOW).events[0]


def outgoing(body: bytes) -> bytes:
    """The add_message fixture as a message a manager (or a bot) sent."""
    return body.replace(b"%5Btype%5D=incoming", b"%5Btype%5D=outgoing")


def bare_event(event_type: str, entities: dict[str, int], **data: object) -> Event:
    return Event(event_type, "test", 0, data, Account(), entities, change="c")


# ----------------------------------------------------------------------- validation

VALIDATION_CASES = [
    (
        "yaml_syntax_error",
        "5:11: invalid YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 4)",
    ),
    ("empty_file", "1:1: the file is empty; expected version: 1 and rules"),
    (
        "top_level_not_a_mapping",
        "1:1: must be a mapping with version and rules, got [{'version': 1}]",
    ),
    ("wrong_version", "1:1: version: must be 1, got 2"),
    ("missing_version", "1:1: missing required key 'version'"),
    ("default_key_at_top_level", "2:1: unknown key 'cooldown'; it belongs under 'defaults'"),
    ("defaults_not_a_mapping", "2:1: defaults: must be a mapping, got '24h'"),
    ("duplicate_yaml_key", "6:5: rules[0] (name=\"welcome\"): duplicate key 'launch'"),
    ("rules_not_a_list", "2:1: rules: must be a list of rules, got {'name': 'welcome'}"),
    ("rule_not_a_mapping", "3:5: rules[0]: must be a mapping, got 'welcome'"),
    ("missing_launch", "3:5: rules[0] (name=\"welcome\"): missing required key 'launch'"),
    (
        "unknown_rule_key_with_suggestion",
        "5:5: rules[0] (name=\"welcome\"): unknown key 'wen'; did you mean 'when'?",
    ),
    (
        "bot_id_not_a_positive_integer",
        "14:7: rules[2] (name=\"vip\"): launch.bot_id: must be a positive integer, got 'abc'",
    ),
    (
        "unknown_entity",
        "5:27: rules[0] (name=\"welcome\"): launch.entity: must be one of 'contact', 'lead', "
        "'company', 'customer', got 'leed'; did you mean 'lead'?",
    ),
    (
        "rule_key_inside_launch",
        "8:7: rules[0] (name=\"welcome\"): launch: unknown key 'cooldown'; "
        "it belongs on the rule, beside 'launch'",
    ),
    (
        "launch_key_on_the_rule",
        "5:5: rules[0] (name=\"welcome\"): unknown key 'bot_id'; it belongs under 'launch'",
    ),
    (
        "unknown_event_type",
        "4:5: rules[0] (name=\"welcome\"): on: unknown event type 'lead.status_change'; "
        "did you mean 'lead.status_changed'?",
    ),
    (
        "amocrm_setting_name_as_event_type",
        "4:22: rules[0] (name=\"welcome\"): on[1]: unknown event type 'status_lead'; "
        "did you mean 'lead.status_changed'?",
    ),
    (
        "wildcard_matching_nothing",
        "4:5: rules[0] (name=\"welcome\"): on: wildcard 'deal.*' matches no event type",
    ),
    ("empty_event_list", '4:5: rules[0] (name="welcome"): on: must name at least one event type'),
    (
        "duplicate_rule_name",
        "6:5: rules[1] (name=\"welcome\"): name: duplicate rule name 'welcome', "
        "already used by rules[0]",
    ),
    (
        "rule_name_with_separator",
        "3:5: rules[0] (name=\"a|b\"): name: must not contain '|', got 'a|b'",
    ),
    (
        "bad_duration",
        "6:5: rules[0] (name=\"welcome\"): cooldown: must be a duration such as '30s', '10m', "
        "'24h', '7d' or '1h30m', got '24 hours'",
    ),
    (
        "duration_over_a_year",
        "6:5: rules[0] (name=\"welcome\"): delay: must be at most 365d, got '400d'",
    ),
    (
        "flag_not_a_boolean",
        "6:5: rules[0] (name=\"welcome\"): enabled: must be true or false, got 'no'",
    ),
    (
        "unknown_time_zone",
        '6:20: rules[0] (name="welcome"): active_hours.timezone: unknown time zone '
        "'Europe/Moskow'; did you mean 'Europe/Moscow'?",
    ),
    (
        "unknown_day",
        "6:35: rules[0] (name=\"welcome\"): active_hours.days: unknown day 'sta'; "
        "did you mean 'sat'?",
    ),
    (
        "bad_time_of_day",
        '6:35: rules[0] (name="welcome"): active_hours.from: must be a time of day '
        "such as '09:00', got '9am'",
    ),
    (
        "empty_window",
        "8:9: rules[0] (name=\"welcome\"): active_hours[1]: 'from' and 'to' are both "
        "'10:00', so the window is empty",
    ),
    (
        "active_hours_not_a_window",
        '6:5: rules[0] (name="welcome"): active_hours: must be a window {timezone, days, '
        "from, to}, a list of windows or 'always', got 'weekdays'",
    ),
    (
        "unknown_outside_hours",
        "7:5: rules[0] (name=\"welcome\"): outside_hours: must be one of 'schedule', 'skip', "
        "got 'skipp'; did you mean 'skip'?",
    ),
    (
        "outside_hours_without_active_hours",
        '6:5: rules[0] (name="welcome"): outside_hours: has no effect without active_hours '
        "(on the rule or in defaults)",
    ),
    (
        "unknown_if_busy",
        "6:5: rules[0] (name=\"welcome\"): if_busy: must be one of 'skip', 'wait', got 'queue'",
    ),
    (
        "if_busy_with_the_guard_off",
        '7:5: rules[0] (name="welcome"): if_busy: has no effect with one_bot_per_chat: 0s '
        "(the guard is off)",
    ),
    (
        "entity_the_event_never_carries",
        '5:27: rules[0] (name="welcome"): launch.entity: lead.status_changed events never '
        "carry a contact id (they carry: lead)",
    ),
    (
        "when_not_a_mapping",
        '5:5: rules[0] (name="welcome"): when: must be a mapping of conditions, '
        "got [{'status_id': 142}]",
    ),
    (
        "id_field_not_an_integer",
        "6:7: rules[0] (name=\"welcome\"): when.status_id: expected an integer, got 'won'",
    ),
    (
        "unknown_operator_with_suggestion",
        "6:15: rules[0] (name=\"welcome\"): when.price: unknown operator 'gtt'; did you mean 'gt'?",
    ),
    (
        "operator_used_as_field",
        "6:7: rules[0] (name=\"welcome\"): when.not: 'not' is an operator; put it under "
        "a field: status_id: {not: …}",
    ),
    (
        "comparison_with_text",
        "6:15: rules[0] (name=\"welcome\"): when.price.gte: must be a number, got 'lots'",
    ),
    (
        "in_not_a_list",
        '6:19: rules[0] (name="welcome"): when.status_id.in: must be a list of values, got 142',
    ),
    (
        "exists_not_a_boolean",
        '6:21: rules[0] (name="welcome"): when.author.type.exists: must be true or false, '
        "got 'yes'",
    ),
    (
        "null_condition",
        '6:7: rules[0] (name="welcome"): when.responsible_user_id: null matches nothing; '
        "use {exists: false} for a missing field",
    ),
    (
        "empty_operator_mapping",
        '6:7: rules[0] (name="welcome"): when.price: must set at least one of eq, in, not, '
        "exists, gt, gte, lt, lte",
    ),
    (
        "any_not_a_list",
        '6:7: rules[0] (name="welcome"): when.any: must be a list of condition mappings, '
        "got {'status_id': 142}",
    ),
    (
        "tags_as_bare_list",
        '6:7: rules[0] (name="welcome"): when.tags: a list is ambiguous here; '
        "write {any: [...]} or {all: [...]}",
    ),
    (
        "unknown_tag_test",
        "6:26: rules[0] (name=\"welcome\"): when.tags: unknown tag test 'non'; "
        "did you mean 'none'?",
    ),
    (
        "tags_test_used_as_field",
        "6:7: rules[0] (name=\"welcome\"): when.all: 'all' is a tags test; "
        "write tags: {all: [...]}",
    ),
    (
        "eq_with_a_list",
        '6:15: rules[0] (name="welcome"): when.price.eq: must be a single value, got [1000, 2000]',
    ),
    (
        "event_type_not_text",
        '4:22: rules[0] (name="welcome"): on[1]: must be an event type such as '
        "'lead.status_changed', got 5",
    ),
    (
        "time_zone_abbreviation",
        '6:20: rules[0] (name="welcome"): active_hours.timezone: unknown time zone '
        "'MSK'; did you mean 'Europe/Moscow'? (MSK is UTC+3)",
    ),
    (
        "time_zone_offset",
        '6:20: rules[0] (name="welcome"): active_hours.timezone: unknown time zone '
        "'UTC+3'; did you mean 'Europe/Moscow' or 'Etc/GMT-3'? (UTC+3 all year)",
    ),
    (
        "condition_field_misspelt",
        "6:7: rules[0] (name=\"welcome\"): when.tag: unknown field 'tag' for "
        "lead.status_changed; did you mean 'tags'?",
    ),
    (
        "condition_field_without_id",
        "6:7: rules[0] (name=\"welcome\"): when.status: unknown field 'status' for "
        "lead.status_changed; did you mean 'status_id'?",
    ),
    (
        "nested_field_misspelt",
        '7:11: rules[0] (name="welcome"): when.any[0].author.typ: unknown field '
        "'author.typ' for message.added; did you mean 'author.type'?",
    ),
    (
        "indentation_key_between_levels",
        "7:4: indentation: 'launch' is indented 3 spaces, which lines up with no key above "
        "it; indent it 4 spaces, beside 'when' (line 5)",
    ),
    (
        "indentation_list_item",
        "6:4: indentation: this list item is indented 3 spaces, which lines up with no list "
        "item above it; indent it 2 spaces, as the list item on line 3",
    ),
    (
        "indentation_key_under_a_value",
        "5:7: indentation: 'launch' is indented deeper than 'on' on line 4, which already "
        "has a value, so YAML reads it as part of that value; indent it 4 spaces, beside 'on'",
    ),
    (
        "indentation_with_a_tab",
        "4:1: a tab character: YAML indents with spaces only; replace the tab with spaces",
    ),
    (
        "colon_in_unquoted_value",
        "3:13: the value of 'name' holds ': ', which YAML reads as another key; quote the "
        'value: name: "Re: welcome"',
    ),
    (
        "condition_key_beside_when",
        "7:5: rules[0] (name=\"welcome\"): unknown key 'status_id'; it belongs under 'when'",
    ),
    (
        "enum_not_an_integer",
        '7:17: rules[0] (name="welcome"): when.custom_fields.66339.enum: '
        "expected an integer, got 'Сайт'",
    ),
    (
        "enum_outside_custom_fields",
        "6:19: rules[0] (name=\"welcome\"): when.status_id: unknown operator 'enum'; "
        "'enum' (select option ids) is a condition of a custom field only",
    ),
    (
        "custom_fields_not_a_mapping",
        '6:7: rules[0] (name="welcome"): when.custom_fields: must map field ids or names '
        "to conditions, got 'Москва'",
    ),
    (
        "unsupported_yaml_tag",
        '6:13: rules[0] (name="welcome"): when.name: unsupported YAML tag '
        "'tag:yaml.org,2002:binary'",
    ),
]


@pytest.mark.parametrize(
    ("case", "message"), VALIDATION_CASES, ids=[case for case, _ in VALIDATION_CASES]
)
def test_invalid_rules_file_is_reported_with_file_line_column_and_path(
    case: str, message: str
) -> None:
    text = (FIXTURES / "rules" / f"{case}.yaml").read_text(encoding="utf-8")

    with pytest.raises(RulesError) as caught:
        load_rules(text, f"{case}.yaml")

    assert caught.value.problems == [f"{case}.yaml:{message}"]


def test_every_rules_fixture_has_a_validation_case() -> None:
    fixtures = {path.stem for path in (FIXTURES / "rules").glob("*.yaml")}

    assert fixtures - {case for case, _ in VALIDATION_CASES} == {
        "all_errors_at_once",
        "unknown_top_level_key",
    }


def test_all_errors_of_a_file_are_reported_at_once_in_file_order() -> None:
    text = (FIXTURES / "rules" / "all_errors_at_once.yaml").read_text(encoding="utf-8")

    with pytest.raises(RulesError) as caught:
        load_rules(text, "rules.yaml")

    assert caught.value.problems == [
        "rules.yaml:3:3: defaults.cooldown: must be a duration such as '30s', '10m', '24h', "
        "'7d' or '1h30m', got 'soon'",
        'rules.yaml:6:5: rules[0] (name="welcome"): on: unknown event type '
        "'lead.status_chnaged'; did you mean 'lead.status_changed'?",
        'rules.yaml:8:7: rules[0] (name="welcome"): when.status_id: expected an integer, '
        "got 'won'",
        'rules.yaml:9:14: rules[0] (name="welcome"): launch.bot_id: must be a positive '
        "integer, got 0",
        "rules.yaml:10:5: rules[1] (name=\"welcome\"): name: duplicate rule name 'welcome', "
        "already used by rules[0]",
        "rules.yaml:12:5: rules[1] (name=\"welcome\"): launch: missing required key 'entity'",
    ]
    assert str(caught.value).splitlines()[0] == "rules.yaml: 6 errors"


def test_unknown_top_level_key_is_named_beside_the_missing_one() -> None:
    text = (FIXTURES / "rules" / "unknown_top_level_key.yaml").read_text(encoding="utf-8")

    with pytest.raises(RulesError) as caught:
        load_rules(text, "rules.yaml")

    assert caught.value.problems == [
        "rules.yaml:1:1: missing required key 'rules'",
        "rules.yaml:2:1: unknown key 'rule'; did you mean 'rules'?",
    ]


def test_unreadable_rules_file_is_a_rules_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as caught:
        load_rules_file(tmp_path / "absent.yaml")

    path = tmp_path / "absent.yaml"
    assert caught.value.problems == [f"{path}: cannot read: No such file or directory"]


def test_yaml_11_traps_are_read_as_written() -> None:
    """`on:` stays a key (not `true`) and an unquoted `18:00` stays a time (not 1080)."""
    rules = load_rules(
        "version: 1\nrules:\n  - name: r\n    on: lead.added\n"
        "    active_hours: {timezone: UTC, from: 09:00, to: 18:00}\n"
        "    launch: {bot_id: 1, entity: lead}\n"
    )

    assert rules.rules[0].event_types == {"lead.added"}
    assert rules.rules[0].active_hours == ActiveHours(
        (Window(ZoneInfo("UTC"), frozenset(range(7)), 9 * 60, 18 * 60),)
    )


def test_anchors_and_merge_keys_share_settings_between_rules() -> None:
    rules = load_rules(
        dedent(
            """\
            version: 1
            rules:
              - &base
                name: first
                on: lead.added
                cooldown: 2h
                launch: {bot_id: 1, entity: lead}
              - <<: *base
                name: second
                on: lead.restored
            """
        )
    )

    assert [(r.name, r.cooldown, sorted(r.event_types)) for r in rules.rules] == [
        ("first", timedelta(hours=2), ["lead.added"]),
        ("second", timedelta(hours=2), ["lead.restored"]),
    ]


def test_rules_file_example_in_the_rules_reference_validates() -> None:
    reference = (REPO / "docs" / "rules.md").read_text(encoding="utf-8")
    section = reference[reference.index("## The file") :]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]

    rules = load_rules(example, "docs/rules.md")

    assert [(r.name, r.cooldown, r.delay) for r in rules.rules] == [
        ("qualified-lead-welcome", timedelta(hours=24), timedelta(minutes=1))
    ]


def test_example_rules_file_validates() -> None:
    rules = load_rules_file(REPO / "rules.yaml")

    assert [rule.name for rule in rules.rules] == [
        "qualified-lead-welcome",
        "new-chat-greeting",
        "after-hours-reply",
    ]
    assert rules.conflicts() == []


# ------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("1h30m", timedelta(minutes=90)),
        ("1d 2h", timedelta(hours=26)),
        ("0s", timedelta(0)),
    ],
)
def test_durations_are_read_from_units(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "24", "24H", "30m1h", "1.5h", "h", "10 minutes", 24, None])
def test_duration_garbage_is_rejected_with_the_accepted_forms(text: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)

    assert str(caught.value) == (
        f"must be a duration such as '30s', '10m', '24h', '7d' or '1h30m', got {text!r}"
    )


@given(st.integers(min_value=0, max_value=365 * 86400))
def test_formatted_durations_read_back_to_the_same_length(seconds: int) -> None:
    value = timedelta(seconds=seconds)

    assert parse_duration(format_duration(value)) == value


# ------------------------------------------------------------------------ conditions

STAGE_RULE = """\
- name: welcome
  on: lead.status_changed
  launch: {bot_id: 101, entity: lead}
"""


def test_stage_change_rule_launches_its_bot_on_the_lead(webhook_body: Body) -> None:
    event = first_event(webhook_body("status_lead"))

    launches = compile_rules(STAGE_RULE).match(event, NOW)

    assert launches == [
        PlannedLaunch(
            "welcome",
            101,
            "lead",
            2,
            LEAD,
            event,
            not_before=NOW,
            cooldown=None,
            one_bot_per_chat=timedelta(minutes=10),
        )
    ]


def test_dedupe_key_names_rule_bot_entity_and_the_change(webhook_body: Body) -> None:
    event = first_event(webhook_body("status_lead"))

    [launch] = compile_rules(STAGE_RULE).match(event, NOW)

    assert launch.dedupe_key == f"welcome|101|2|{LEAD}|lead:{LEAD}@1727700894:s59936202"


LEAD_BOT = "{bot_id: 1, entity: lead}"
CONDITION_CASES = [
    # (fixture, when, matched, reason)
    ("status_lead", "status_id: 59936202", True, "matched"),
    ("status_lead", "status_id: 142", False, "status_id: 59936202 is not 142"),
    ("status_lead", "status_id: '59936202'", True, "matched"),
    ("status_lead", "status_id: [142, 59936202]", True, "matched"),
    (
        "status_lead",
        "status_id: {in: [142, 143]}",
        False,
        "status_id: 59936202 is not in [142, 143]",
    ),
    (
        "status_lead",
        "status_id: {not: 59936202}",
        False,
        "status_id: 59936202 matches not: 59936202",
    ),
    ("status_lead", "status_id: {not: [142, 143]}", True, "matched"),
    ("status_lead", "old_status_id: 59936198", True, "matched"),
    ("status_lead", "pipeline_id: 7173574", True, "matched"),
    (
        "status_lead",
        "responsible_user_id: 10004031",
        False,
        "responsible_user_id: 10004026 is not 10004031",
    ),
    ("status_lead", "lead.status_id: 59936202", True, "matched"),
    ("status_lead", "price: {gte: 15000, lt: 20000}", True, "matched"),
    ("status_lead", "price: {gt: 15000}", False, "price: 15000 is not > 15000"),
    ("status_lead", "price: {lte: 100}", False, "price: 15000 is not <= 100"),
    ("status_lead", "name: {gt: 1}", False, "name: 'Заявка с сайта' is not a number"),
    ("status_lead", "loss_reason: {exists: false}", True, "matched"),
    ("status_lead", "loss_reason: {exists: true}", False, "loss_reason: missing"),
    ("status_lead", "loss_reason: 5", False, "loss_reason: missing"),
    ("status_lead", "tags: site", True, "matched"),
    ("status_lead", "tags: vip", False, "tags: none of ['vip'] in ['site']"),
    ("status_lead", "tags: {any: [vip, site]}", True, "matched"),
    ("status_lead", "tags: {all: [site, vip]}", False, "tags: ['vip'] not in ['site']"),
    ("status_lead", "tags: {none: [site]}", False, "tags: has ['site']"),
    ("status_lead", "custom_fields: {Город: Москва}", True, "matched"),
    (
        "status_lead",
        "custom_fields: {1425011: Казань}",
        False,
        "custom_fields[1425011]: ['Москва'] is not 'Казань'",
    ),
    ("status_lead", "custom_fields: {66339: {in: [Сайт, Реклама]}}", True, "matched"),
    (
        "status_lead",
        "custom_fields: {Бюджет: {exists: true}}",
        False,
        "custom_fields['Бюджет']: missing",
    ),
    ("add_lead", "custom_fields: {UTM_SOURCE: yandex}", True, "matched"),
    ("status_lead", "any: [{status_id: 142}, {tags: site}]", True, "matched"),
    (
        "status_lead",
        "any: [{status_id: 142}, {tags: vip}]",
        False,
        "any: no branch matched "
        "(status_id: 59936202 is not 142; tags: none of ['vip'] in ['site'])",
    ),
    (
        "status_lead",
        "pipeline_id: 7173574, status_id: 142",
        False,
        "status_id: 59936202 is not 142",
    ),
    ("add_message", "author.type: external", True, "matched"),
    ("add_message", "author.type: user", False, "author.type: 'external' is not 'user'"),
    (
        "add_message",
        "origin: {in: [whatsapp, waba]}",
        False,
        "origin: 'telegram' is not in ['whatsapp', 'waba']",
    ),
    ("add_message", "message.origin: telegram", True, "matched"),
    ("add_message", "attachment.type: voice", False, "attachment.type: missing"),
    ("add_talk", "is_in_work: false", True, "matched"),
    ("add_talk", "is_read: true", False, "is_read: False is not True"),
]


@pytest.mark.parametrize(("fixture", "when", "matched", "reason"), CONDITION_CASES)
def test_conditions_match_or_say_why_not(
    webhook_body: Body, fixture: str, when: str, matched: bool, reason: str
) -> None:
    event = first_event(webhook_body(fixture))
    rules = compile_rules(f"- {{name: r, on: '*', when: {{{when}}}, launch: {LEAD_BOT}}}\n")

    [decision] = rules.explain(event, NOW)

    assert (decision.matched, decision.reason) == (matched, reason)


# ---------------------------------------------------------------------- loop safety

MESSAGE_RULE = """\
- name: reply
  on: message.added
  {when}
  launch: {{bot_id: 7, entity: contact}}
"""


def test_message_rule_matches_incoming_messages(webhook_body: Body) -> None:
    event = first_event(webhook_body("add_message"))

    launches = compile_rules(MESSAGE_RULE.format(when="")).match(event, NOW)

    assert [launch.bot_id for launch in launches] == [7]


def test_message_rule_ignores_outgoing_messages_unless_it_asks_for_them(
    webhook_body: Body,
) -> None:
    event = first_event(outgoing(webhook_body("add_message")))

    decisions = compile_rules(MESSAGE_RULE.format(when="")).explain(event, NOW)

    assert decisions == [
        Decision(
            "reply",
            False,
            "message type is 'outgoing'; without a 'type' condition only incoming match",
            None,
        )
    ]


def test_message_rule_asking_for_outgoing_matches_outgoing_only(webhook_body: Body) -> None:
    rules = compile_rules(MESSAGE_RULE.format(when="when: {type: outgoing}"))
    sent = first_event(outgoing(webhook_body("add_message")))
    received = first_event(webhook_body("add_message"))

    assert [len(rules.match(sent, NOW)), len(rules.match(received, NOW))] == [1, 0]


def test_message_rule_asking_for_both_types_matches_both(webhook_body: Body) -> None:
    rules = compile_rules(MESSAGE_RULE.format(when="when: {type: {in: [incoming, outgoing]}}"))
    sent = first_event(outgoing(webhook_body("add_message")))
    received = first_event(webhook_body("add_message"))

    assert [len(rules.match(sent, NOW)), len(rules.match(received, NOW))] == [1, 1]


def test_type_condition_inside_any_keeps_the_incoming_only_guard(webhook_body: Body) -> None:
    rules = compile_rules(MESSAGE_RULE.format(when="when: {any: [{type: outgoing}]}"))

    assert rules.match(first_event(outgoing(webhook_body("add_message"))), NOW) == []


def test_wildcards_skip_outgoing_message_events_unless_they_name_them() -> None:
    rules = compile_rules(
        """\
        - name: everything
          on: '*'
          launch: {bot_id: 1, entity: contact}
        - name: outgoing
          on: outgoing_message.*
          launch: {bot_id: 2, entity: contact}
        """
    )

    assert [rule.name for rule in rules.rules if "outgoing_message.added" in rule.event_types] == [
        "outgoing"
    ]


# -------------------------------------------------------------------------- entities


@pytest.mark.parametrize(
    ("entity", "entity_type", "entity_id"), [("lead", 2, CHAT_LEAD), ("contact", 1, CHAT_CONTACT)]
)
def test_chat_event_launches_on_the_chosen_entity(
    webhook_body: Body, entity: str, entity_type: int, entity_id: int
) -> None:
    rules = compile_rules(
        f"- {{name: r, on: talk.added, launch: {{bot_id: 5, entity: {entity}}}}}\n"
    )

    [launch] = rules.match(first_event(webhook_body("add_talk")), NOW)

    assert (launch.entity, launch.entity_type, launch.entity_id) == (entity, entity_type, entity_id)


def test_event_without_the_chosen_entity_yields_no_launch_and_says_so() -> None:
    rules = compile_rules("- {name: r, on: talk.added, launch: {bot_id: 5, entity: lead}}\n")
    event = bare_event("talk.added", {"contact": 9})

    assert rules.explain(event, NOW) == [
        Decision("r", True, "matched, but the event carries no lead id (it has: contact)", None)
    ]


# ------------------------------------------------------------- timing: cooldown, delay


def test_cooldown_is_carried_on_the_launch_and_inherited_from_defaults(
    webhook_body: Body,
) -> None:
    rules = compile_rules(
        """\
        - {name: own, on: lead.status_changed, cooldown: 1h30m, launch: {bot_id: 1, entity: lead}}
        - {name: inherited, on: lead.status_changed, launch: {bot_id: 1, entity: lead}}
        - {name: none, on: lead.status_changed, cooldown: 0s, launch: {bot_id: 1, entity: lead}}
        """,
        defaults="cooldown: 24h\n",
    )

    launches = rules.match(first_event(webhook_body("status_lead")), NOW)

    assert [(launch.rule, launch.cooldown) for launch in launches] == [
        ("own", timedelta(minutes=90)),
        ("inherited", timedelta(hours=24)),
        ("none", None),
    ]


def test_delay_moves_not_before_later(webhook_body: Body) -> None:
    rules = compile_rules(
        "- {name: r, on: lead.status_changed, delay: 10m, launch: {bot_id: 1, entity: lead}}\n"
    )

    [launch] = rules.match(first_event(webhook_body("status_lead")), NOW)

    assert launch.not_before == NOW + timedelta(minutes=10)
    assert launch.not_before.tzinfo is UTC


def test_naive_now_is_taken_as_utc(webhook_body: Body) -> None:
    [launch] = compile_rules(STAGE_RULE).match(
        first_event(webhook_body("status_lead")), NOW.replace(tzinfo=None)
    )

    assert launch.not_before == NOW


# ---------------------------------------------------------------------- active hours

OFFICE = "{timezone: Europe/Moscow, days: [mon-fri], from: '09:00', to: '18:00'}"


def hours_rule(active_hours: str, extra: str = "") -> RuleSet:
    return compile_rules(
        f"- name: r\n  on: lead.status_changed\n  active_hours: {active_hours}\n{extra}"
        "  launch: {bot_id: 1, entity: lead}\n"
    )


def not_before(rules: RuleSet, body: bytes, now: datetime) -> datetime | None:
    launches = rules.match(first_event(body), now)
    return launches[0].not_before if launches else None


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # Tuesday 12:00 Moscow: open.
        (datetime(2024, 10, 1, 9, 0, tzinfo=UTC), datetime(2024, 10, 1, 9, 0, tzinfo=UTC)),
        # Tuesday 08:59 Moscow: wait a minute.
        (datetime(2024, 10, 1, 5, 59, tzinfo=UTC), datetime(2024, 10, 1, 6, 0, tzinfo=UTC)),
        # Tuesday 18:00 Moscow: closed (the end is exclusive), next is Wednesday 09:00.
        (datetime(2024, 10, 1, 15, 0, tzinfo=UTC), datetime(2024, 10, 2, 6, 0, tzinfo=UTC)),
        # Saturday noon: Monday 09:00.
        (datetime(2024, 10, 5, 9, 0, tzinfo=UTC), datetime(2024, 10, 7, 6, 0, tzinfo=UTC)),
    ],
)
def test_launch_outside_active_hours_waits_for_the_next_opening(
    webhook_body: Body, now: datetime, expected: datetime
) -> None:
    assert not_before(hours_rule(OFFICE), webhook_body("status_lead"), now) == expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # Monday 23:00 Moscow: inside Monday's night.
        (datetime(2024, 9, 30, 20, 0, tzinfo=UTC), datetime(2024, 9, 30, 20, 0, tzinfo=UTC)),
        # Tuesday 03:00 Moscow: still Monday's night.
        (datetime(2024, 10, 1, 0, 0, tzinfo=UTC), datetime(2024, 10, 1, 0, 0, tzinfo=UTC)),
        # Tuesday 07:00 Moscow: the night is over; Monday is next week.
        (datetime(2024, 10, 1, 4, 0, tzinfo=UTC), datetime(2024, 10, 7, 19, 0, tzinfo=UTC)),
        # Monday 03:00 Moscow: Sunday's night is not listed; Monday 22:00 is next.
        (datetime(2024, 9, 30, 0, 0, tzinfo=UTC), datetime(2024, 9, 30, 19, 0, tzinfo=UTC)),
    ],
)
def test_overnight_window_belongs_to_the_day_it_starts(
    webhook_body: Body, now: datetime, expected: datetime
) -> None:
    night = "{timezone: Europe/Moscow, days: [mon], from: '22:00', to: '06:00'}"

    assert not_before(hours_rule(night), webhook_body("status_lead"), now) == expected


def test_delay_applies_before_active_hours(webhook_body: Body) -> None:
    rules = hours_rule(OFFICE, extra="  delay: 10m\n")
    friday_1755_moscow = datetime(2024, 10, 4, 14, 55, tzinfo=UTC)

    assert not_before(rules, webhook_body("status_lead"), friday_1755_moscow) == datetime(
        2024, 10, 7, 6, 0, tzinfo=UTC
    )


def test_several_windows_open_at_the_earliest_of_them(webhook_body: Body) -> None:
    windows = (
        "[{timezone: Europe/Moscow, days: [mon-fri], from: '09:00', to: '18:00'},"
        " {timezone: Asia/Vladivostok, days: [sat], from: '10:00', to: '12:00'}]"
    )
    friday_2000_moscow = datetime(2024, 10, 4, 17, 0, tzinfo=UTC)

    assert not_before(hours_rule(windows), webhook_body("status_lead"), friday_2000_moscow) == (
        datetime(2024, 10, 5, 0, 0, tzinfo=UTC)  # Saturday 10:00 in Vladivostok
    )


def test_active_hours_follow_daylight_saving_time(webhook_body: Body) -> None:
    rules = hours_rule("{timezone: America/New_York, days: [mon], from: '09:00', to: '10:00'}")
    saturday_before_the_switch = datetime(2024, 3, 9, 20, 0, tzinfo=UTC)

    assert not_before(rules, webhook_body("status_lead"), saturday_before_the_switch) == (
        datetime(2024, 3, 11, 13, 0, tzinfo=UTC)  # 09:00 EDT, not EST
    )


def test_outside_hours_skip_drops_the_launch_and_says_why(webhook_body: Body) -> None:
    rules = hours_rule(OFFICE, extra="  outside_hours: skip\n")
    saturday = datetime(2024, 10, 5, 9, 0, tzinfo=UTC)

    assert rules.explain(first_event(webhook_body("status_lead")), saturday) == [
        Decision(
            "r",
            True,
            "matched, but 2024-10-05T09:00:00+00:00 is outside active hours (outside_hours: skip)",
            None,
        )
    ]


def test_defaults_active_hours_apply_unless_a_rule_says_always(webhook_body: Body) -> None:
    rules = compile_rules(
        """\
        - {name: office, on: lead.status_changed, launch: {bot_id: 1, entity: lead}}
        - name: always
          on: lead.status_changed
          active_hours: always
          launch: {bot_id: 2, entity: lead}
        """,
        defaults=f"active_hours: {OFFICE}\noutside_hours: skip\n",
    )
    saturday = datetime(2024, 10, 5, 9, 0, tzinfo=UTC)

    assert [
        launch.rule for launch in rules.match(first_event(webhook_body("status_lead")), saturday)
    ] == ["always"]


@given(
    moment=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    days=st.frozensets(st.integers(0, 6), min_size=1),
    start=st.integers(0, 1439),
    length=st.integers(1, 1439),
    zone=st.sampled_from(["UTC", "Europe/Moscow", "America/New_York", "Australia/Lord_Howe"]),
)
def test_next_opening_is_never_earlier_and_is_itself_open(
    moment: datetime, days: frozenset[int], start: int, length: int, zone: str
) -> None:
    from zoneinfo import ZoneInfo

    hours = ActiveHours((Window(ZoneInfo(zone), days, start, (start + length) % 1440 or 1440),))

    opening = hours.next_open(moment)

    assert moment <= opening < moment + timedelta(days=8)
    assert hours.next_open(opening) == opening


# ------------------------------------------------------------ enabled, stop, ordering


def test_every_matching_rule_fires_in_file_order(webhook_body: Body) -> None:
    rules = compile_rules(
        """\
        - {name: a, on: lead.status_changed, launch: {bot_id: 1, entity: lead}}
        - {name: b, on: lead.*, launch: {bot_id: 2, entity: lead}}
        """
    )

    launches = rules.match(first_event(webhook_body("status_lead")), NOW)

    assert [launch.rule for launch in launches] == ["a", "b"]


def test_stop_hides_the_event_from_later_rules_only_when_it_matches(webhook_body: Body) -> None:
    rules = compile_rules(
        """\
        - {name: vip, on: lead.status_changed, when: {tags: vip}, stop: true, launch: &bot1
            {bot_id: 1, entity: lead}}
        - {name: site, on: lead.status_changed, when: {tags: site}, stop: true, launch: *bot1}
        - {name: rest, on: lead.status_changed, launch: {bot_id: 3, entity: lead}}
        """
    )

    decisions = rules.explain(first_event(webhook_body("status_lead")), NOW)

    assert [(d.rule, d.matched, d.reason) for d in decisions] == [
        ("vip", False, "tags: none of ['vip'] in ['site']"),
        ("site", True, "matched"),
        ("rest", False, "not considered: rule 'site' matched first and has stop: true"),
    ]


def test_disabled_rule_is_shown_but_never_fires(webhook_body: Body) -> None:
    rules = compile_rules(
        "- {name: off, on: lead.added, enabled: false, launch: {bot_id: 1, entity: lead}}\n"
    )

    assert rules.explain(first_event(webhook_body("add_lead")), NOW) == [
        Decision("off", False, "disabled (enabled: false)", None)
    ]
    assert rules.event_types() == set()


def test_explain_shows_only_rules_listening_to_the_event_type(webhook_body: Body) -> None:
    rules = compile_rules(
        """\
        - {name: chat, on: talk.added, launch: {bot_id: 1, entity: contact}}
        - {name: stage, on: lead.status_changed, launch: {bot_id: 2, entity: lead}}
        """
    )

    assert [d.rule for d in rules.explain(first_event(webhook_body("status_lead")), NOW)] == [
        "stage"
    ]


def test_update_that_moved_the_stage_fires_stage_rules_once(webhook_body: Body) -> None:
    rules = compile_rules(STAGE_RULE)
    events = decode_payload(webhook_body("update_lead"), NOW).events

    launches = [launch for event in events for launch in rules.match(event, NOW)]

    assert [(launch.rule, launch.entity_id) for launch in launches] == [("welcome", LEAD)]


# ---------------------------------------------------------- event types and summary


def test_event_types_expand_wildcards_against_known_types() -> None:
    rules = compile_rules(
        """\
        - {name: a, on: [talk.*, message.added], launch: {bot_id: 1, entity: contact}}
        - {name: b, on: unsorted.added, launch: {bot_id: 2, entity: lead}}
        """
    )

    assert rules.event_types() == {"talk.added", "talk.updated", "message.added", "unsorted.added"}
    assert rules.summary() == {
        "talk.added": 1,
        "talk.updated": 1,
        "message.added": 1,
        "unsorted.added": 1,
    }


def test_summary_counts_enabled_rules_per_event_type() -> None:
    rules = compile_rules(
        """\
        - {name: a, on: lead.added, launch: {bot_id: 1, entity: lead}}
        - {name: b, on: lead.added, launch: {bot_id: 1, entity: lead}}
        - {name: c, on: lead.added, enabled: false, launch: {bot_id: 1, entity: lead}}
        - {name: d, on: talk.added, launch: {bot_id: 1, entity: lead}}
        """
    )

    assert rules.summary() == {"lead.added": 2, "talk.added": 1}


# ------------------------------------------------------------------------ conflicts


GUARD_OFF = "one_bot_per_chat: 0s\n"


def test_two_bots_on_the_same_entity_for_one_event_type_are_a_conflict() -> None:
    rules = compile_rules(
        """\
        - {name: welcome, on: [lead.added, lead.status_changed], launch: {bot_id: 1, entity: lead}}
        - {name: upsell, on: lead.*, launch: {bot_id: 2, entity: lead}}
        """,
        GUARD_OFF,
    )

    assert rules.conflicts() == [
        "rules 'welcome' (bot 1) and 'upsell' (bot 2) can both start on the same lead for "
        "lead.added, lead.status_changed, lead.status_changed + lead.updated (sent together); "
        "the second bot interrupts the first. one_bot_per_chat is 0s on 'welcome' and "
        "'upsell': set it (e.g. 10m) to make the later one yield (if_busy: skip) or wait "
        "(if_busy: wait)"
    ]


def test_a_conflict_on_one_event_needs_the_guard_on_the_later_rule_only() -> None:
    rules = compile_rules(
        """\
        - {name: welcome, on: lead.added, launch: {bot_id: 1, entity: lead}}
        - {name: upsell, on: lead.added, one_bot_per_chat: 0s, launch: {bot_id: 2, entity: lead}}
        - {name: late, on: lead.added, launch: {bot_id: 3, entity: lead}}
        """
    )

    assert rules.conflicts() == [
        "rules 'welcome' (bot 1) and 'upsell' (bot 2) can both start on the same lead for "
        "lead.added; the second bot interrupts the first. one_bot_per_chat is 0s on "
        "'upsell': set it (e.g. 10m) to make the later one yield (if_busy: skip) or wait "
        "(if_busy: wait); or make their conditions exclusive, or add stop: true to 'welcome'"
    ]


@pytest.mark.parametrize(
    ("first", "second", "where", "events"),
    [
        pytest.param(
            "{name: a, on: talk.added, launch: {bot_id: 1, entity: contact}}",
            "{name: b, on: message.added, launch: {bot_id: 2, entity: contact}}",
            "on the same contact",
            "talk.added + message.added (sent together)",
            id="a customer's first message",
        ),
        pytest.param(
            "{name: a, on: unsorted.added, launch: {bot_id: 1, entity: contact}}",
            "{name: b, on: lead.added, launch: {bot_id: 2, entity: lead}}",
            "in one chat (contact and lead of the same chat)",
            "unsorted.added + lead.added (sent together)",
            id="a chat becomes a lead",
        ),
        pytest.param(
            "{name: a, on: lead.updated, launch: {bot_id: 1, entity: lead}}",
            "{name: b, on: lead.status_changed, launch: {bot_id: 2, entity: lead}}",
            "on the same lead",
            "lead.updated + lead.status_changed (sent together)",
            id="a stage move",
        ),
        pytest.param(
            "{name: a, on: talk.added, launch: {bot_id: 1, entity: lead}}",
            "{name: b, on: talk.added, launch: {bot_id: 2, entity: contact}}",
            "in one chat (lead and contact of the same chat)",
            "talk.added",
            id="lead and contact of one talk",
        ),
    ],
)
def test_events_sent_together_and_lead_against_contact_are_conflicts_without_the_guard(
    first: str, second: str, where: str, events: str
) -> None:
    rules = compile_rules(f"- {first}\n- {second}\n", GUARD_OFF)

    [warning] = rules.conflicts()

    assert warning.startswith(f"rules 'a' (bot 1) and 'b' (bot 2) can both start {where} for ")
    assert f" for {events}; the second bot interrupts the first." in warning
    assert "one_bot_per_chat is 0s on 'a' and 'b'" in warning or "on 'b'" in warning


@pytest.mark.parametrize(
    "defaults",
    ["", "one_bot_per_chat: 1m\n", "one_bot_per_chat: 10m\nif_busy: wait\n"],
)
def test_the_guard_resolves_every_conflict_so_none_is_a_warning(defaults: str) -> None:
    rules = compile_rules(
        """\
        - {name: a, on: [talk.added, lead.*], launch: {bot_id: 1, entity: lead}}
        - {name: b, on: message.added, launch: {bot_id: 2, entity: contact}}
        - {name: c, on: [lead.added, unsorted.added], launch: {bot_id: 3, entity: lead}}
        """,
        defaults,
    )

    assert rules.conflicts() == []


def test_a_guard_off_on_one_rule_of_events_sent_together_is_still_a_conflict() -> None:
    rules = compile_rules(
        """\
        - {name: greet, on: talk.added, launch: {bot_id: 1, entity: contact}}
        - {name: reply, on: message.added, launch: {bot_id: 2, entity: contact}}
        """,
        "one_bot_per_chat: 0s\n",
    ).rules
    guarded = RuleSet([rules[0], replace(rules[1], one_bot_per_chat=timedelta(minutes=10))])

    [warning] = guarded.conflicts()

    assert "one_bot_per_chat is 0s on 'greet': set it" in warning


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(
            "{name: a, on: lead.added, when: {status_id: 1}, launch: {bot_id: 1, entity: lead}}",
            "{name: b, on: lead.added, when: {status_id: [2, 3]}, "
            "launch: {bot_id: 2, entity: lead}}",
            id="exclusive stages",
        ),
        pytest.param(
            "{name: a, on: lead.added, stop: true, launch: {bot_id: 1, entity: lead}}",
            "{name: b, on: lead.added, launch: {bot_id: 2, entity: lead}}",
            id="the first stops the event",
        ),
        pytest.param(
            "{name: a, on: lead.added, launch: {bot_id: 1, entity: lead}}",
            "{name: b, on: lead.added, launch: {bot_id: 1, entity: lead}}",
            id="same bot (cooldown and dedupe deal with it)",
        ),
        pytest.param(
            "{name: a, on: lead.added, launch: {bot_id: 1, entity: lead}}",
            "{name: b, on: contact.added, launch: {bot_id: 2, entity: contact}}",
            id="a lead and a contact no event names together",
        ),
        pytest.param(
            "{name: a, on: lead.added, launch: {bot_id: 1, entity: lead}}",
            "{name: b, on: lead.added, enabled: false, launch: {bot_id: 2, entity: lead}}",
            id="one is disabled",
        ),
        pytest.param(
            "{name: a, on: talk.added, launch: {bot_id: 1, entity: contact}}",
            "{name: b, on: message.added, when: {type: outgoing}, "
            "launch: {bot_id: 2, entity: contact}}",
            id="a talk and our own outgoing message",
        ),
    ],
)
def test_rules_that_cannot_both_start_different_bots_are_not_a_conflict(
    first: str, second: str
) -> None:
    rules = compile_rules(f"- {first}\n- {second}\n", GUARD_OFF)

    assert rules.conflicts() == []


def test_incoming_and_outgoing_message_rules_are_not_a_conflict() -> None:
    rules = compile_rules(
        """\
        - {name: in, on: message.added, launch: {bot_id: 1, entity: contact}}
        - name: out
          on: message.added
          when: {type: outgoing}
          launch: {bot_id: 2, entity: contact}
        """,
        GUARD_OFF,
    )

    assert rules.conflicts() == []


# -------------------------------------------------------------------------- reloading


GOOD = "version: 1\nrules:\n  - {name: a, on: lead.added, launch: {bot_id: 1, entity: lead}}\n"
BETTER = GOOD + "  - {name: b, on: lead.added, launch: {bot_id: 2, entity: lead}}\n"
BROKEN = "version: 1\nrules:\n  - {name: a, on: lead.nope, launch: {bot_id: 1, entity: lead}}\n"


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    return path


def test_loader_loads_the_file_at_once(rules_path: Path, clock: FakeClock) -> None:
    loader = RulesLoader(rules_path, clock=clock)

    assert loader.current is not None
    assert (loader.rule_count, loader.error) == (1, None)
    assert loader.content_hash == hashlib.sha256(GOOD.encode()).hexdigest()
    assert loader.loaded_at is not None and loader.loaded_at.tzinfo is UTC


def test_loader_looks_at_the_file_at_most_once_a_second(rules_path: Path, clock: FakeClock) -> None:
    loader = RulesLoader(rules_path, clock=clock)
    rules_path.write_text(BETTER)

    clock.now += 0.9
    early = loader.maybe_reload()
    clock.now += 0.1
    late = loader.maybe_reload()

    assert (len(early or ()), len(late or ())) == (1, 2)


def test_broken_file_keeps_the_last_good_rules_and_logs_the_error(
    rules_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    loader = RulesLoader(rules_path, clock=clock)
    good = loader.current
    rules_path.write_text(BROKEN)
    clock.now += 1

    with caplog.at_level(logging.ERROR, logger="automation.rules"):
        kept = loader.maybe_reload()

    problem = (
        f"{rules_path}:3:15: rules[0] (name=\"a\"): on: unknown event type 'lead.nope'; "
        "did you mean 'lead.updated'?"
    )
    assert kept is good
    assert loader.error == f"{rules_path}: 1 error\n{problem}"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"rules reload failed file={rules_path} error={problem} (kept previous rules)"
    ]


def test_loaded_file_logs_each_of_its_warnings_once(
    rules_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    loader = RulesLoader(rules_path, clock=clock)
    rules_path.write_text(
        "version: 1\nrules:\n  - {name: a, on: lead.added, when: {utm: x}, "
        "launch: {bot_id: 1, entity: lead}}\n"
    )
    clock.now += 1

    with caplog.at_level(logging.WARNING, logger="automation.rules"):
        loader.maybe_reload()
        clock.now += 1
        loader.maybe_reload()

    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f'rules warning file={rules_path} warning={rules_path}:3:38: rules[0] (name="a"): '
        "when.utm: 'utm' is not a field lead.added events are known to carry (the "
        "condition holds only if amoCRM sends it)"
    ]


def test_fixed_file_replaces_the_rules_and_clears_the_error(
    rules_path: Path, clock: FakeClock
) -> None:
    loader = RulesLoader(rules_path, clock=clock)
    rules_path.write_text(BROKEN)
    clock.now += 1
    loader.maybe_reload()
    rules_path.write_text(BETTER)
    clock.now += 1

    rules = loader.maybe_reload()

    assert (len(rules or ()), loader.error) == (2, None)


def test_touched_file_with_the_same_content_is_not_parsed_again(
    rules_path: Path, clock: FakeClock
) -> None:
    loader = RulesLoader(rules_path, clock=clock)
    before = loader.current
    rules_path.write_text(GOOD + "\n")
    rules_path.write_text(GOOD)  # new mtime, same bytes
    clock.now += 1

    assert loader.maybe_reload() is before


def test_missing_file_leaves_no_rules_and_an_error(tmp_path: Path, clock: FakeClock) -> None:
    loader = RulesLoader(tmp_path / "absent.yaml", clock=clock)

    assert (loader.current, loader.rule_count, loader.content_hash) == (None, 0, None)
    assert loader.error == (
        f"{tmp_path / 'absent.yaml'}: 1 error\n"
        f"{tmp_path / 'absent.yaml'}: cannot read: No such file or directory"
    )


def test_concurrent_readers_always_see_a_whole_rule_set(rules_path: Path) -> None:
    clock = FakeClock()
    loader = RulesLoader(rules_path, clock=clock)
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(200):
                seen.append(len(loader.maybe_reload() or ()))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for text in (BETTER, GOOD, BETTER):
        rules_path.write_text(text)
        clock.now += 1
    for thread in threads:
        thread.join()

    clock.now += 1

    assert errors == []
    assert set(seen) <= {1, 2}
    assert len(loader.maybe_reload() or ()) == 2
