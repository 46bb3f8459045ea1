"""The JSON Schema of the rules file, for editors (`automation rules schema`).

Its shape comes from the pydantic models of `spec.py` (their keys, aliases, required
keys and docstrings); what their validators check in code (event types, entities,
durations, days, times of day, conditions) is spelled out here, with a description
for every key. Editors that read JSON Schema (VS Code and others through
yaml-language-server, JetBrains IDEs) then complete keys and flag mistakes while
typing. The schema helps; `automation rules check` decides: what needs the whole file
(duplicate names, an entity an event never carries, a wildcard matching nothing) or
the machine (time zone names) is checked only there.

Draft 7, the draft editors support best. Pure: no Flask, SQLAlchemy or requests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from automation.events.payloads import ACTION_VERBS, ENTITY_TYPE_CODES, FAMILY_ACTIONS
from automation.limits import MAX_ID, RULE_NAME_LENGTH
from automation.rules.conditions import ENUM, OPERATORS
from automation.rules.hours import FULL_DAYS
from automation.rules.spec import (
    RULE_EVENT_TYPES,
    DefaultsSpec,
    FileSpec,
    LaunchSpec,
    RuleSpec,
    WindowSpec,
)

Schema = dict[str, Any]

#: How to bring the committed `rules.schema.json` in step with the models.
REGENERATE = "automation rules schema > rules.schema.json"
#: Fields whose values are amoCRM ids, which a rule must give as integers.
_ID_FIELDS = {
    "pipeline_id": "Pipeline id (of the lead or the stage change).",
    "status_id": "Stage id the lead is in (after a stage change: the new stage).",
    "old_pipeline_id": "Pipeline id before a stage change.",
    "old_status_id": "Stage id before a stage change.",
    "responsible_user_id": "Id of the responsible user.",
    "old_responsible_user_id": "Id of the responsible user before the change.",
}
_OTHER_FIELDS = {
    "price": "Budget of the lead; compare with {gt, gte, lt, lte}.",
    "name": "Name of the lead, contact or company (exact text).",
    "type": "Message direction: incoming (the default for message rules) or outgoing.",
    "origin": "Chat channel of a message or talk: telegram, whatsapp, waba, …",
    "author.type": "Who wrote a message: external (the customer) or user (a manager).",
    "text": "Text of a message (exact, case matters).",
    "is_read": "Whether the talk was read.",
    "is_in_work": "Whether the talk is in work.",
}


def rules_schema() -> Schema:
    """The whole schema as a JSON-ready dict, the same on every machine (so nothing in
    it may depend on the installed time zone database)."""
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "amoCRM automation rules",
        **_object(FileSpec, _file_keys()),
        "description": "Which amoCRM events start which Salesbot, on which lead or contact, "
        "and when. Check a file with `automation rules check`; the full reference is "
        "docs/rules.md.",
        "definitions": _definitions(),
    }


def schema_text() -> str:
    """`rules_schema()` as the text of `rules.schema.json` (ends with a newline)."""
    return json.dumps(rules_schema(), indent=2, ensure_ascii=False) + "\n"


def _object(model: type[BaseModel], keys: Mapping[str, Schema]) -> Schema:
    """An object with exactly the model's keys (by alias), its required keys and its
    docstring; `keys` describes each one and must name the same keys, so that a key
    added to a model without a description here fails loudly (and in the tests)."""
    generated = model.model_json_schema(by_alias=True)
    names = list(generated["properties"])
    if set(names) != set(keys):
        raise ValueError(
            f"{model.__name__}: schema keys {sorted(keys)} differ from the model's {sorted(names)}"
        )
    return {
        "type": "object",
        "description": generated.get("description", ""),
        "properties": dict(keys),  # in the order `keys` gives: the way a file reads
        "required": generated.get("required", []),
        "additionalProperties": False,
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/definitions/{name}"}


def _described(description: str, name: str) -> Schema:
    """A reference with a description of its own: draft 7 ignores keys beside `$ref`,
    so the reference goes in `allOf`."""
    return {"description": description, "allOf": [_ref(name)]}


def _file_keys() -> dict[str, Schema]:
    return {
        "version": {"description": "Version of the file format: always 1.", "const": 1},
        "defaults": _described("Values every rule inherits unless it sets its own.", "defaults"),
        "rules": {
            "description": "The rules, tried in file order; every matching rule fires "
            "unless an earlier one says `stop: true`.",
            "type": "array",
            "items": _ref("rule"),
        },
    }


def _timing_keys() -> dict[str, Schema]:
    """The keys a rule shares with `defaults`."""
    return {
        "cooldown": _described(
            "No second launch of this bot on this entity within this time (`0s`: none).",
            "duration",
        ),
        "delay": _described("Launch no earlier than this long after the event.", "duration"),
        "active_hours": _ref("active_hours"),
        "outside_hours": {
            "description": "Outside active hours: `schedule` waits for the next opening, "
            "`skip` drops the launch.",
            "enum": ["schedule", "skip"],
            "default": "schedule",
        },
        "one_bot_per_chat": _described(
            "amoCRM runs one Salesbot per chat: while another bot's launch on the same "
            "chat is due, or ran within this time, this launch is busy (default `10m`; "
            "`0s`: off).",
            "duration",
        ),
        "if_busy": {
            "description": "A busy launch: `skip` stores it skipped, `wait` starts it after "
            "the other bot's window.",
            "enum": ["skip", "wait"],
            "default": "skip",
        },
    }


def _rule_keys() -> dict[str, Schema]:
    return {
        "name": {
            "description": "Unique name of the rule, shown in the launch log; no `|`, "
            f"at most {RULE_NAME_LENGTH} characters.",
            "type": "string",
            "maxLength": RULE_NAME_LENGTH,
            "pattern": r"^[^|]*[^|\s][^|]*$",
        },
        "on": {
            "description": "Event type(s) that trigger the rule: a type, a list of them, "
            "or a wildcard (`lead.*`, `*.added`, `*`).",
            "anyOf": [
                _ref("event_type"),
                {"type": "array", "items": _ref("event_type"), "minItems": 1},
            ],
        },
        "when": _described(
            "Conditions on the event; every one must hold (default: always).", "conditions"
        ),
        "launch": _described("Which Salesbot to start, on which entity of the event.", "launch"),
        **_timing_keys(),
        "enabled": {
            "description": "`false` keeps the rule but switches it off.",
            "type": "boolean",
            "default": True,
        },
        "stop": {
            "description": "When this rule matches, later rules do not see the event.",
            "type": "boolean",
            "default": False,
        },
    }


def _launch_keys() -> dict[str, Schema]:
    return {
        "bot_id": {
            "description": f"The Salesbot's id (a positive integer, at most {MAX_ID}).",
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                {"type": "string", "pattern": "^0*[1-9][0-9]{0,18}$"},
            ],
        },
        "entity": {
            "description": "What the bot runs on: the event's lead, contact, company or customer.",
            "enum": list(ENTITY_TYPE_CODES),
        },
    }


def _window_keys() -> dict[str, Schema]:
    return {
        "timezone": {
            "description": "IANA time zone of the window.",
            "type": "string",
            "minLength": 1,
            "examples": ["Europe/Moscow", "Asia/Almaty", "Europe/Kaliningrad", "UTC"],
        },
        "days": {
            "description": "Days the window opens: mon…sun or ranges such as mon-fri "
            "(default: every day).",
            "anyOf": [_ref("day"), {"type": "array", "items": _ref("day"), "minItems": 1}],
        },
        "from": {
            "description": 'Opening time, inclusive, as "HH:MM".',
            "type": "string",
            "pattern": "^(?:[01]?[0-9]|2[0-3]):[0-5][0-9]$",
        },
        "to": {
            "description": 'Closing time, exclusive, as "HH:MM" ("24:00" is midnight); a '
            "`to` not after `from` runs overnight.",
            "type": "string",
            "pattern": "^(?:(?:[01]?[0-9]|2[0-3]):[0-5][0-9]|24:00)$",
        },
    }


def _definitions() -> dict[str, Schema]:
    return {
        "defaults": _object(DefaultsSpec, _timing_keys()),
        "rule": _object(RuleSpec, _rule_keys()),
        "launch": _object(LaunchSpec, _launch_keys()),
        "window": _object(WindowSpec, _window_keys()),
        "active_hours": _active_hours(),
        "event_type": _event_type(),
        "duration": _duration(),
        "day": _day(),
        **_condition_definitions(),
    }


def _event_type() -> Schema:
    wildcards = ["*", *(f"{family}.*" for family in FAMILY_ACTIONS)]
    wildcards += sorted({f"*.{verb}" for verb in ACTION_VERBS.values()})
    return {
        "description": "An event type, or a wildcard over them (`outgoing_message.added` "
        "is reached only by a pattern that starts with `outgoing_message`).",
        "anyOf": [
            {"enum": list(RULE_EVENT_TYPES)},
            {"enum": wildcards},
            {"type": "string", "pattern": r"\*"},
        ],
    }


def _duration() -> Schema:
    unit = "(?:[0-9][0-9 ]*{} *)?"
    return {
        "description": "A number and a unit, largest unit first: 30s, 10m, 24h, 7d, 1h30m "
        "(at most 365d). A bare number is an error.",
        "type": "string",
        "pattern": "^(?=.*[dhms]) *" + "".join(unit.format(u) for u in "dhms") + "$",
        "examples": ["30s", "10m", "24h", "7d", "1h30m"],
    }


def _active_hours() -> Schema:
    return {
        "description": "Windows in which the bot may start: one window, a list of them, "
        "or `always` (overrides `defaults`).",
        "anyOf": [
            {"const": "always"},
            _ref("window"),
            {"type": "array", "items": _ref("window"), "minItems": 1},
        ],
    }


def _day() -> Schema:
    """`mon`, `Monday`, `mon-fri`, `fri - mon`: any case, short or full names."""
    names = "|".join(_any_case(name[:3]) + f"(?:{_any_case(name[3:])})?" for name in FULL_DAYS)
    day = f"(?:{names})"
    return {
        "description": "A day (mon…sun, or the full name) or a range such as mon-fri.",
        "anyOf": [
            {"enum": [*(name[:3] for name in FULL_DAYS), "mon-fri", "sat-sun"]},
            {"type": "string", "pattern": f"^ *{day} *(?:- *{day} *)?$"},
        ],
    }


def _any_case(word: str) -> str:
    """`mon` → `[mM][oO][nN]`: JSON Schema patterns have no case-insensitive flag."""
    return "".join(f"[{letter}{letter.upper()}]" for letter in word)


def _condition_definitions() -> dict[str, Schema]:
    scalar: Schema = {"type": ["string", "number", "boolean"]}
    integer: Schema = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+$"}]}
    return {
        "conditions": _conditions(),
        "value": _value(scalar, "value"),
        "id_value": _value(integer, "id_value"),
        "custom_field_value": _value(scalar, "value", _enum_key()),
        "tags": _tags(),
    }


def _conditions() -> Schema:
    fields = {name: _described(text, "id_value") for name, text in _ID_FIELDS.items()}
    fields |= {name: _described(text, "value") for name, text in _OTHER_FIELDS.items()}
    return {
        "description": "Conditions on fields of the event (as `rules test` prints them "
        "under data:); dotted paths reach inside. All must hold.",
        "type": "object",
        "properties": {
            "any": {
                "description": "At least one of these condition sets holds.",
                "type": "array",
                "items": {"allOf": [_ref("conditions")], "minProperties": 1},
                "minItems": 1,
            },
            "tags": _ref("tags"),
            "custom_fields": {
                "description": "Custom fields by name, code or id, each with a condition "
                "on its values, or with {enum: …} on the ids of its select options.",
                "type": "object",
                "additionalProperties": _ref("custom_field_value"),
                "minProperties": 1,
            },
            **fields,
        },
        "propertyNames": {"not": {"enum": [*OPERATORS, "all", "none"]}},
        "additionalProperties": _ref("value"),
    }


def _enum_key() -> Schema:
    """`enum:` of a custom field's condition: the ids of its select options."""
    return {
        ENUM: _described(
            "Select option id(s) of the field (values[].enum), which stay the same when "
            "an option is renamed: an id, a list of ids (any of them) or operators.",
            "id_value",
        )
    }


def _value(scalar: Schema, name: str, extra: Schema | None = None) -> Schema:
    """A field's condition: a value, a list of values (any of them) or operators;
    `extra` adds keys to the operators (a custom field's `enum`)."""
    values = {"type": "array", "items": scalar, "minItems": 1}
    numbers = {"type": "number"}
    described = ", ".join([*OPERATORS, *(extra or {})])
    return {
        "description": "A value (equals), a list of values (equals any), or operators "
        f"{{{described}}}.",
        "anyOf": [
            scalar,
            values,
            {
                "type": "object",
                "properties": {
                    "eq": {"description": "Equals this value.", **scalar},
                    "in": {"description": "Equals any of these values.", **values},
                    "not": _described("Does not match this condition.", name),
                    "exists": {
                        "description": "true: present and not empty; false: absent or empty.",
                        "type": "boolean",
                    },
                    **{
                        op: {"description": f"A number {op} this.", **numbers}
                        for op in ("gt", "gte", "lt", "lte")
                    },
                    **(extra or {}),
                },
                "additionalProperties": False,
                "minProperties": 1,
            },
        ],
    }


def _tags() -> Schema:
    names = {
        "anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        ]
    }
    return {
        "description": "Has the tag (by name), or {any: […]}, {all: […]}, {none: […]}.",
        "anyOf": [
            {"type": "string", "minLength": 1},
            {
                "type": "object",
                "properties": {
                    "any": {"description": "Has any of these tags.", **names},
                    "all": {"description": "Has all of these tags.", **names},
                    "none": {"description": "Has none of these tags.", **names},
                },
                "additionalProperties": False,
                "minProperties": 1,
            },
        ],
    }
