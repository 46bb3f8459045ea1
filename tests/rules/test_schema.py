"""The JSON Schema of rules files: in step with the models, and right about real files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft7Validator
from pydantic import BaseModel

from automation.cli import main
from automation.errors import RulesError
from automation.rules import load as rules
from automation.rules.load import RULE_EVENT_TYPES, load_rules
from automation.rules.schema import REGENERATE, _object, rules_schema

ROOT = Path(__file__).resolve().parents[2]
RULES_FIXTURES = Path(__file__).parents[1] / "fixtures" / "rules"

#: Error fixtures the schema cannot catch, and why: `rules check` remains the judge.
CHECKED_ONLY_BY_THE_LOADER = {
    "duplicate_rule_name": "needs the whole list",
    "duplicate_yaml_key": "a YAML matter; JSON has no duplicate keys",
    "duration_over_a_year": "a pattern cannot add up units",
    "empty_window": "needs 'from' and 'to' compared",
    "entity_the_event_never_carries": "needs 'on' and 'launch' together",
    "outside_hours_without_active_hours": "needs the rule and its defaults together",
    "if_busy_with_the_guard_off": "needs the rule and its defaults together",
    "unknown_time_zone": "the zone list differs between machines",
    "condition_field_misspelt": "needs 'on' and 'when' together",
    "condition_field_without_id": "needs 'on' and 'when' together",
    "nested_field_misspelt": "needs 'on' and 'when' together",
    "time_zone_abbreviation": "the zone list differs between machines",
    "time_zone_offset": "the zone list differs between machines",
    "unsupported_yaml_tag": "a YAML matter",
    "wildcard_matching_nothing": "needs the wildcard expanded",
    "yaml_syntax_error": "not YAML at all",
    "indentation_key_between_levels": "not YAML at all",
    "indentation_list_item": "not YAML at all",
    "indentation_key_under_a_value": "not YAML at all",
    "indentation_with_a_tab": "not YAML at all",
    "colon_in_unquoted_value": "not YAML at all",
}

#: Every form the rules reference documents, in one file the loader accepts.
EVERY_FORM = """\
version: 1
defaults:
  cooldown: 24h
  delay: 1h 30m
  active_hours: {timezone: Europe/Moscow, days: [mon-fri], from: "09:00", to: "18:00"}
  outside_hours: schedule
  one_bot_per_chat: 10m
  if_busy: skip
rules:
  - name: qualified-lead-welcome
    on: lead.status_changed
    when:
      pipeline_id: 7173574
      status_id: [59936202, "59936206"]
      old_status_id: {not: [142, 143]}
      price: {gte: 10000, lt: 50000}
      author.name: {exists: true}
      tags: vip
      custom_fields: {Город: Москва, 1425011: {in: [A, B]}, UTM_SOURCE: yandex}
      any: [{custom_fields: {66339: {enum: 139517}, Источник: {enum: [139517, "139519"]}}}]
    launch: {bot_id: 101, entity: lead}
  - name: any-branch
    on: lead.added
    when:
      any: [{tags: {any: [vip, hot]}}, {price: {gt: 100000}}]
    launch: {bot_id: 101, entity: lead}
    delay: 1m
    cooldown: 0s
    one_bot_per_chat: 1h
    if_busy: wait
  - name: chats
    on: [talk.added, "message.*", "*.added"]
    when:
      type: {in: [incoming, outgoing]}
      origin: {eq: telegram}
      tags: {all: [a, b], none: spam}
    launch: {bot_id: "102", entity: contact}
    active_hours:
      - {timezone: Europe/Moscow, days: [Mon - Fri, saturday], from: "9:00", to: "24:00"}
      - {timezone: UTC, days: fri, from: "22:00", to: "06:00"}
    outside_hours: skip
    enabled: false
    stop: true
  - name: everything
    on: "*"
    active_hours: always
    one_bot_per_chat: 0s
    launch: {bot_id: 3, entity: contact}
"""


def read_yaml(text: str) -> Any:
    """The data an editor validates: YAML 1.2 as rules.py reads it (`on:` is a key,
    `18:00` is text), with keys as JSON has them."""
    data = yaml.load(text, Loader=rules._Loader)  # a SafeLoader: rules.py reads with it
    return json.loads(json.dumps(data, default=str))


def schema_errors(text: str) -> list[str]:
    validator = Draft7Validator(rules_schema())
    return [error.message for error in validator.iter_errors(read_yaml(text))]


def test_committed_schema_equals_what_rules_schema_prints() -> None:
    printed = CliRunner().invoke(main, ["rules", "schema"])

    assert printed.exit_code == 0, printed.output
    committed = (ROOT / "rules.schema.json").read_text(encoding="utf-8")
    assert committed == printed.output, f"rules.schema.json is stale: run `{REGENERATE}`"


def test_schema_is_a_valid_draft_7_schema() -> None:
    Draft7Validator.check_schema(rules_schema())


def test_rules_yaml_points_editors_at_the_schema_on_its_first_line() -> None:
    first_line = (ROOT / "rules.yaml").read_text(encoding="utf-8").splitlines()[0]

    assert first_line == "# yaml-language-server: $schema=./rules.schema.json"


def test_rules_yaml_validates_against_the_schema() -> None:
    text = (ROOT / "rules.yaml").read_text(encoding="utf-8")

    assert all("on" in rule for rule in read_yaml(text)["rules"])  # read as YAML 1.2
    assert schema_errors(text) == []


def test_every_documented_form_the_loader_accepts_validates_against_the_schema() -> None:
    load_rules(EVERY_FORM)  # raises if the example itself were wrong

    assert schema_errors(EVERY_FORM) == []


@pytest.mark.parametrize(
    "fixture", sorted(path.stem for path in RULES_FIXTURES.glob("*.yaml")), ids=str
)
def test_a_broken_rules_fixture_is_flagged_by_the_schema_too(fixture: str) -> None:
    text = (RULES_FIXTURES / f"{fixture}.yaml").read_text(encoding="utf-8")
    with pytest.raises(RulesError):
        load_rules(text)
    if fixture in CHECKED_ONLY_BY_THE_LOADER:
        pytest.skip(f"checked only by `rules check`: {CHECKED_ONLY_BY_THE_LOADER[fixture]}")

    assert schema_errors(text) != []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("on: status_lead", "is not valid under any of the given schemas"),
        ("on: lead.status_changed\n    cooldown: 24", "24 is not of type 'string'"),
        ("on: lead.status_changed\n    stop: yes", "'yes' is not of type 'boolean'"),
    ],
)
def test_common_mistakes_get_the_schema_message(line: str, expected: str) -> None:
    text = f"version: 1\nrules:\n  - name: r\n    {line}\n    launch: {{bot_id: 1, entity: lead}}\n"

    assert [message for message in schema_errors(text) if expected in message] != []


def test_event_types_are_offered_for_completion() -> None:
    event_type = rules_schema()["definitions"]["event_type"]

    assert event_type["anyOf"][0] == {"enum": list(RULE_EVENT_TYPES)}
    assert {"*", "lead.*", "*.added"} <= set(event_type["anyOf"][1]["enum"])


def test_every_key_of_every_rules_model_has_a_description() -> None:
    schema = rules_schema()
    objects = [schema, *(d for d in schema["definitions"].values() if d.get("type") == "object")]
    definitions = schema["definitions"]

    undescribed = [
        key
        for obj in objects
        for key, spec in obj["properties"].items()
        if "description" not in spec and "description" not in definitions[spec["$ref"][14:]]
    ]
    assert undescribed == []


def test_a_model_key_the_schema_does_not_describe_is_an_error() -> None:
    class Spec(BaseModel):
        described: int
        new_key: int

    with pytest.raises(ValueError, match=r"Spec: schema keys \['described'\] differ"):
        _object(Spec, {"described": {"type": "integer"}})
