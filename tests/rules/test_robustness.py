"""Rules files and payloads that once gave tracebacks or 500s: each is a clean error now.

Unreadable YAML (control characters, deep nesting, alias bombs), ids and names the
database cannot store, payloads of unexpected shapes, moments at the ends of the
calendar, and keys that are not text.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

import automation.rules.load
from automation.cli import main
from automation.errors import RulesError
from automation.events.payloads import Account, Event
from automation.rules.load import RuleSet, RulesLoader, load_rules
from tests.conftest import TEST_RULES, FakeClock

NOW = datetime(2024, 10, 1, 9, 0, tzinfo=UTC)
GOOD = "version: 1\nrules:\n  - {name: a, on: lead.added, launch: {bot_id: 1, entity: lead}}\n"
#: Texts PyYAML cannot read, and where (line:column) the error must point.
UNREADABLE = [
    pytest.param(GOOD + "\x07", "4:1", "character U+0007 is not allowed", id="bel"),
    pytest.param("version: 1\nrules: [a,\x00]\n", "2:11", "character U+0000", id="nul"),
    pytest.param("version: 1\nrules: " + "[" * 500, "2:71", "nests more than 64", id="deep"),
    pytest.param(
        "version: 1\nrules: " + "{a: " * 500, "2:", "nests more than 64", id="deep-mapping"
    ),
]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["rules", *args])


def lead_event(**data: Any) -> Event:
    return Event("lead.added", "test", 0, data, Account(), {"lead": 1}, change="c")


def rules_of(when: str) -> RuleSet:
    rule = f"{{name: r, on: lead.added, when: {when}, launch: {{bot_id: 1, entity: lead}}}}"
    return load_rules(f"version: 1\nrules:\n  - {rule}\n")


def problems_of(text: str) -> list[str]:
    with pytest.raises(RulesError) as caught:
        load_rules(text, "r.yaml")
    return caught.value.problems


# ------------------------------------------------------------- D2: unreadable YAML


@pytest.mark.parametrize(("text", "where", "message"), UNREADABLE)
def test_unreadable_yaml_is_a_rules_error_with_line_and_column(
    text: str, where: str, message: str
) -> None:
    [problem] = problems_of(text)

    assert problem.startswith(f"r.yaml:{where}")
    assert message in problem


@pytest.mark.parametrize(("text", "where", "message"), UNREADABLE)
def test_rules_check_reports_unreadable_yaml_without_a_traceback(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    path = tmp_path / "ctrl.yaml"
    path.write_text(text)

    result = run("check", str(path))

    assert result.exit_code == 1
    assert not isinstance(result.exception, Exception | RecursionError) or isinstance(
        result.exception, SystemExit
    )
    assert f"{path}:{where}" in result.output
    assert "Traceback" not in result.output


def test_aliases_cannot_expand_without_end() -> None:
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    started = time.monotonic()

    problems = problems_of("\n".join([*lines, "rules: [*a8]"]) + "\n")

    assert time.monotonic() - started < 10
    assert any("aliases repeat more than 100000 values" in p for p in problems)


def test_aliases_cannot_nest_deeper_than_the_limit() -> None:
    lines = ["version: 1", "d0: &d0 " + "[" * 60 + "x" + "]" * 60]
    lines += [f"d{i}: &d{i} " + "[" * 60 + f"*d{i - 1}" + "]" * 60 for i in range(1, 5)]

    problems = problems_of("\n".join([*lines, "rules: [*d4]"]) + "\n")

    assert any("nests more than 64 levels deep (through aliases)" in p for p in problems)


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    return path


@pytest.mark.parametrize(("text", "where", "message"), UNREADABLE)
def test_unreadable_file_keeps_the_last_good_rules_and_is_not_read_again(
    rules_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    where: str,
    message: str,
) -> None:
    loader = RulesLoader(rules_path, clock=clock)
    good = loader.current
    calls: list[str] = []
    real = automation.rules.load.load_rules

    def counting(text: str, filename: str = "rules.yaml") -> RuleSet:
        calls.append(filename)
        return real(text, filename)

    monkeypatch.setattr(automation.rules.load, "load_rules", counting)
    rules_path.write_text(text)
    clock.now += 1
    kept = loader.maybe_reload()
    clock.now += 1
    again = loader.maybe_reload()

    assert kept is good and again is good
    assert loader.error is not None and f"{rules_path}:{where}" in loader.error
    assert message in loader.error
    assert len(calls) == 1  # the failed file's stamp was recorded


def test_unexpected_failure_while_reading_keeps_the_last_good_rules(
    rules_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader = RulesLoader(rules_path, clock=clock)
    good = loader.current

    def broken(text: str, filename: str = "rules.yaml") -> RuleSet:
        raise RuntimeError("a bug")

    monkeypatch.setattr(automation.rules.load, "load_rules", broken)
    rules_path.write_text(GOOD + "\n# changed\n")
    clock.now += 1

    assert loader.maybe_reload() is good
    assert loader.error == (
        f"{rules_path}: 1 error\n{rules_path}: could not be read (RuntimeError: a bug)"
    )


def test_unreadable_rules_file_saved_while_serving_keeps_webhooks_and_healthz_up(
    client: Any, rules_file: Path, webhook_body: Callable[[str], bytes]
) -> None:
    time.sleep(1.1)  # the loader looks at the file at most once a second
    rules_file.write_text(TEST_RULES + "\x07")
    later = time.time() + 5
    os.utime(rules_file, (later, later))

    health = client.get("/healthz")
    answer = client.post(
        "/webhooks/amocrm/s3cret",
        data=webhook_body("status_lead"),
        content_type="application/x-www-form-urlencoded",
    )

    assert health.status_code == 200
    assert health.json["rules"]["rule_count"] == 3
    assert "U+0007" in health.json["rules"]["last_error"]
    assert (answer.status_code, answer.json["launches"]) == (200, 1)


# ----------------------------------------------------- D5: what the database stores


def test_bot_id_larger_than_a_64_bit_integer_is_an_error() -> None:
    text = "version: 1\nrules:\n  - name: a\n    on: lead.added\n"
    text += "    launch: {bot_id: 99999999999999999999999, entity: lead}\n"

    assert problems_of(text) == [
        'r.yaml:5:14: rules[0] (name="a"): launch.bot_id: must be at most '
        "9223372036854775807 (a 64-bit integer), got 99999999999999999999999"
    ]


def test_largest_64_bit_bot_id_and_a_200_character_name_are_accepted() -> None:
    rule = f"{{name: {'n' * 200}, on: lead.added, launch: {{bot_id: {2**63 - 1}, entity: lead}}}}"

    rules = load_rules(f"version: 1\nrules:\n  - {rule}\n")

    assert rules.rules[0].bot_id == 2**63 - 1


def test_rule_name_longer_than_200_characters_is_an_error() -> None:
    rule = f"{{name: {'n' * 201}, on: lead.added, launch: {{bot_id: 1, entity: lead}}}}"

    [problem] = problems_of(f"version: 1\nrules:\n  - {rule}\n")

    assert problem.startswith("r.yaml:3:6: rules[0]")
    assert "name: must be at most 200 characters, got 201" in problem


def test_id_condition_with_thousands_of_digits_is_an_error_not_a_crash() -> None:
    [problem] = problems_of(
        "version: 1\nrules:\n  - {name: a, on: lead.added, launch: {bot_id: 1, entity: lead},\n"
        f'     when: {{status_id: "{"9" * 5000}"}}}}\n'
    )

    assert "when.status_id: expected an integer, got '999" in problem


# ------------------------------------------------------------ D6: payload shapes


@pytest.mark.parametrize(
    ("when", "data"),
    [
        ('{"tags.¹": x}', {"tags": [{"name": "x"}]}),
        ('{"tags.٣": x}', {"tags": [{"name": "x"}]}),
        ("{custom_fields: {Город: Москва}}", {"custom_fields": 5}),
        ("{custom_fields: {Город: Москва}}", {"custom_fields": True}),
        ("{custom_fields: {Город: Москва}}", {"custom_fields": "Москва"}),
        ("{custom_fields: {Город: Москва}}", {"custom_fields": [{"name": "Город", "values": 7}]}),
        ("{custom_fields: {1: Москва}}", {"custom_fields": [{"id": 1, "values": True}]}),
        ("{price: '1'}", {"price": [[[[1]]]]}),
        ("{price: x}", {"price": 10**5000}),
    ],
)
def test_payload_of_an_unexpected_shape_does_not_match(when: str, data: dict[str, Any]) -> None:
    [decision] = rules_of(when).explain(lead_event(**data), NOW)

    assert decision.matched is False


def test_custom_field_values_in_the_usual_shape_still_match() -> None:
    data = {"custom_fields": [{"name": "Город", "values": [{"value": "Москва"}]}]}

    [decision] = rules_of("{custom_fields: {Город: Москва}}").explain(lead_event(**data), NOW)

    assert decision.matched is True


def test_index_paths_read_lists_by_ascii_digits() -> None:
    event = lead_event(tags=[{"name": "x"}])

    assert rules_of('{"tags.0.name": x}').explain(event, NOW)[0].matched is True


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
json_keys = st.sampled_from(
    ["name", "value", "values", "id", "code", "tags", "custom_fields", "0", "¹", "type"]
) | st.text(max_size=3)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=20,
)
#: One rule per kind of condition, so that no `any:` branch hides the others.
PROPERTY_CONDITIONS = [
    "{status_id: {in: [1, 2]}}",
    "{price: {gte: 10, lt: 100}}",
    "{name: {not: [a, b]}}",
    "{author.name: {exists: true}}",
    "{author.type: {exists: false}}",
    '{"tags.0.name": x}',
    '{"tags.¹": x}',
    "{tags: {any: [vip], all: [a, b], none: [spam]}}",
    "{custom_fields: {Город: Москва, 1425011: {in: [A, 1]}, UTM: {gt: 5}}}",
    "{type: incoming}",
    '{price: "15000"}',
    "{any: [{price: 1}, {custom_fields: {Город: Москва}}]}",
]
PROPERTY_RULES = [rules_of(when).rules[0] for when in PROPERTY_CONDITIONS]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["status_id", "price", "name", "author", "tags", "custom_fields", "type", "lead"]
        ),
        json_values,
        max_size=6,
    )
)
def test_conditions_never_raise_on_any_json_like_payload(data: dict[str, Any]) -> None:
    event = lead_event(**data)

    for rule in PROPERTY_RULES:
        reason = rule.condition.test(event)  # not through the safety net of `why_not`
        assert reason is None or isinstance(reason, str)


def test_a_failing_condition_is_no_match_rather_than_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = rules_of("{status_id: 1}")

    class Hostile(dict[str, Any]):
        def get(self, *args: Any) -> Any:
            raise RuntimeError("odd payload")

    event = Event("lead.added", "test", 0, Hostile(), Account(), {"lead": 1}, change="c")
    [decision] = rules.explain(event, NOW)

    assert decision.matched is False
    assert "cannot read" in decision.reason
    assert "odd payload" in caplog.text


# ---------------------------------------------------- D7: the ends of the calendar


@pytest.mark.parametrize("at", ["9999-12-31T23:59:59", "0001-01-01T00:00:00"])
def test_rules_test_at_the_end_of_time_is_a_clean_error(at: str) -> None:
    result = run("test", "--at", at, "tests/fixtures/webhooks/status_lead.form")

    assert result.exit_code == 2
    assert "Invalid value for '--at': must be between 0002-01-01 and 9998-01-01" in result.output


def test_cases_file_at_the_end_of_time_is_a_clean_error(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        'cases:\n  - name: x\n    body: "leads[status][0][id]=5"\n'
        '    at: "9999-12-31T23:59:00"\n    expect: []\n'
    )

    result = run("test", "--rules", "rules.yaml", "--cases", str(cases))

    assert result.exit_code == 1
    assert f'{cases}:4:5: cases[0] (name="x"): at: must be between' in result.output


@pytest.mark.parametrize(
    "now", [datetime(9999, 12, 31, 23, 59, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC)]
)
def test_matching_at_the_ends_of_the_calendar_launches_nothing_and_says_why(
    now: datetime,
) -> None:
    rule = (
        "{name: r, on: lead.added, delay: 1h, launch: {bot_id: 1, entity: lead},"
        " active_hours: {timezone: Europe/Moscow, from: '09:00', to: '18:00'}}"
    )
    rules = load_rules(f"version: 1\nrules:\n  - {rule}\n")

    [decision] = rules.explain(lead_event(), now)

    assert (decision.matched, decision.launch) == (True, None)
    assert "outside the calendar" in decision.reason


# ----------------------------------------------------- D13, D14, D16: odd keys


def test_keys_1_and_true_are_not_one_duplicate_key() -> None:
    text = "version: 1\nrules:\n  - name: a\n    on: lead.added\n"
    text += "    when: {1: a, true: b}\n    launch: {bot_id: 1, entity: lead}\n"

    assert problems_of(text) == [
        "r.yaml:5:12: rules[0] (name=\"a\"): when.1: must be a field name such as 'status_id', "
        "got 1",
        'r.yaml:5:18: rules[0] (name="a"): when: a key must be text, got true; '
        'quote it ("true") to mean the text',
    ]


def test_unreadable_tagged_keys_give_no_follow_on_errors() -> None:
    text = "version: 1\nrules:\n  - name: a\n    on: lead.added\n"
    text += '    when: {!!binary "aGVsbG8=": 1, !foo x: 2}\n'
    text += "    launch: {bot_id: 1, entity: lead}\n"

    assert problems_of(text) == [
        "r.yaml:5:12: rules[0] (name=\"a\"): when: unsupported YAML tag 'tag:yaml.org,2002:binary'",
        "r.yaml:5:36: rules[0] (name=\"a\"): when: unsupported YAML tag '!foo'",
    ]


def test_null_key_is_reported_at_its_own_line() -> None:
    assert problems_of("version: 1\nrules: []\nnull: y\n") == [
        'r.yaml:3:1: a key must be text, got null; quote it ("null") to mean the text'
    ]


def test_number_key_at_the_top_is_an_unknown_key_on_its_line() -> None:
    assert problems_of("version: 1\nrules: []\n1: x\n") == ["r.yaml:3:1: unknown key 1"]


def test_custom_field_id_keys_are_shown_as_names_not_indexes() -> None:
    text = "version: 1\nrules:\n  - name: a\n    on: lead.added\n"
    text += "    when: {custom_fields: {1425011: {nope: 1}}}\n"
    text += "    launch: {bot_id: 1, entity: lead}\n"

    [problem] = problems_of(text)

    assert 'rules[0] (name="a"): when.custom_fields.1425011: unknown operator' in problem


def test_a_long_file_without_aliases_is_not_cut_short() -> None:
    """The alias cap counts repeats only: 120,000 values, none repeated, are fine."""
    ids = ", ".join(str(i) for i in range(1, 120_001))
    text = (
        "version: 1\nrules:\n"
        f"  - {{name: many, on: lead.status_changed, when: {{status_id: [{ids}]}}, "
        "launch: {bot_id: 1, entity: lead}}\n"
    )

    rules = load_rules(text, "r.yaml")

    assert len(rules) == 1
