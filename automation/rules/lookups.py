"""Where a condition finds its value in an event: a dotted path, a custom field (its
values or its option ids), the tags.

A payload of another shape than expected (`custom_fields: 5`, `values: 7`) has no such
field rather than an error: a webhook must never fail because of what amoCRM sent.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from automation.events.payloads import Event
from automation.rules.matchers import EventTest, Failure
from automation.rules.yamlfile import MISSING

Getter = Callable[[Event], Any]


def path_getter(path: tuple[str, ...]) -> Getter:
    """Read a dotted path from `event.data`; `message.type` reads `type` of a message."""

    def get(event: Event) -> Any:
        steps = path[1:] if path[0] == event.family and path[0] not in event.data else path
        value: Any = event.data
        for step in steps:
            if isinstance(value, Mapping):
                value = value.get(step, MISSING)
            elif isinstance(value, list) and _is_index(step) and int(step) < len(value):
                value = value[int(step)]
            else:
                return MISSING
        return value

    return get


def _is_index(step: str) -> bool:
    """A list index in a path: ASCII digits only (`"¹".isdigit()`, but `int("¹")` fails)."""
    return step.isascii() and step.isdigit() and len(step) <= 18


def custom_field_values(key: int | str) -> Getter:
    """Values of one custom field (legacy shape), found by id, name or code."""
    return _of_custom_field(key, _plain_values)


def custom_field_enums(key: int | str) -> Getter:
    """Select option ids (`values[i][enum]`) of one custom field, by id, name or code."""
    return _of_custom_field(key, _enum_ids)


def _of_custom_field(key: int | str, pick: Callable[[list[Any]], list[Any]]) -> Getter:
    """What `pick` takes from the `values` of the custom field `key`; MISSING when the
    event has no such field (an empty list when it has one without values)."""

    def get(event: Event) -> Any:
        field = _custom_field(event, key)
        if field is None:
            return MISSING
        return pick(_items(field.get("values")))

    return get


def _plain_values(values: list[Any]) -> list[Any]:
    return [v.get("value") if isinstance(v, Mapping) else v for v in values]


def _enum_ids(values: list[Any]) -> list[Any]:
    return [v["enum"] for v in values if isinstance(v, Mapping) and "enum" in v]


def _custom_field(event: Event, key: int | str) -> Mapping[str, Any] | None:
    """The first custom field of the event named `key`, or None."""
    for item in _items(event.data.get("custom_fields")):
        if isinstance(item, Mapping) and _is_field(item, key):
            return item
    return None


def _items(value: Any) -> list[Any]:
    """The items of a list; anything else has none."""
    return value if isinstance(value, list) else []


def _is_field(item: Mapping[str, Any], key: int | str) -> bool:
    if isinstance(key, int):
        return bool(item.get("id") == key)
    return key in (item.get("name"), item.get("code"))


def _tag_names(event: Event) -> set[str]:
    tags = event.data.get("tags")
    items = tags if isinstance(tags, list) else []
    return {str(tag["name"]) for tag in items if isinstance(tag, Mapping) and "name" in tag}


def tags_test(mode: str, wanted: tuple[str, ...]) -> EventTest:
    def check(event: Event) -> Failure | None:
        names = _tag_names(event)
        found = [tag for tag in wanted if tag in names]
        have = sorted(names)
        expected = f"{mode} of {list(wanted)!r}"
        if mode == "any" and not found:
            return Failure("tags", expected, repr(have), f"none of {list(wanted)!r} in {have!r}")
        if mode == "all" and len(found) < len(wanted):
            missing = [tag for tag in wanted if tag not in names]
            return Failure("tags", expected, repr(have), f"{missing!r} not in {have!r}")
        if mode == "none" and found:
            return Failure("tags", expected, repr(have), f"has {found!r}")
        return None

    return check
