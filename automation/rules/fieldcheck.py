"""Condition fields checked against the fields a rule's events are known to carry.

A misspelt field (`tag: vip`, `status: 142`, `author.typ: external`) never matches,
so the rule silently never fires. When every event type of the rule has a documented
field list (`events.fields`) and the field is close to one of them, that is an error
with the likely name (a family without a field list, such as customers, makes it a
warning); a field nobody documents is a warning only, since amoCRM adds
fields over time (`rules check --strict` fails on warnings too). Custom fields and
tags are checked by their own keys (`custom_fields`, `tags`), not by their contents,
which are the account's own names.

Pure: no Flask, SQLAlchemy or requests here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from automation.events.fields import FAMILY_FIELDS, NESTED, known_fields
from automation.rules.yamlfile import Loc, Problem, did_you_mean


def check_fields(
    when: Mapping[Any, Any],
    event_types: Iterable[str],
    on: str,
    loc: Loc,
    found: tuple[list[Problem], list[Problem]],
) -> None:
    """Add an error (to `found[0]`) or a warning (to `found[1]`) for every field of
    `when`, at `loc`, that the events of `event_types` (written `on`) do not carry."""
    known = [known_fields(event_type) for event_type in sorted(event_types)]
    declared = [fields for fields in known if fields is not None]
    if not declared:
        return  # nothing documented: nothing to hold the fields against
    fields = frozenset[str]().union(*declared)
    families = {event_type.split(".", 1)[0] for event_type in event_types}
    # A family without a field list (customers, tasks) may carry a field close to a
    # known one; a note event of a listed family (within `lead.*`) is still a lead's.
    certain = families <= FAMILY_FIELDS.keys()
    errors, warnings = found
    for key, key_loc in _condition_keys(when, loc):
        path = _own_path(key, fields, families)
        if _is_known(path, fields):
            continue
        hint = did_you_mean(".".join(path), _candidates(path, fields))
        if hint and certain:
            errors.append(Problem(key_loc, f"unknown field {key!r} for {on}{hint}"))
        else:
            message = (
                f"{key!r} is not a field {on} events are known to carry (the condition "
                f"holds only if amoCRM sends it){hint}"
            )
            warnings.append(Problem(key_loc, message))


def _condition_keys(when: Mapping[Any, Any], loc: Loc) -> Iterator[tuple[str, Loc]]:
    """Every field key of `when`, inside `any:` branches too, with its place."""
    for key, spec in when.items():
        if key == "any" and isinstance(spec, list):
            for index, branch in enumerate(spec):
                if isinstance(branch, dict):
                    yield from _condition_keys(branch, (*loc, key, index))
        elif isinstance(key, str) and key:
            yield key, (*loc, key)


def _own_path(key: str, fields: frozenset[str], families: set[str]) -> list[str]:
    """The path within the event: `message.type` is `type` of a message event."""
    path = key.split(".")
    if len(path) > 1 and path[0] in families and path[0] not in fields:
        return path[1:]
    return path


def _is_known(path: list[str], fields: frozenset[str]) -> bool:
    """A known field, or a path inside one (`tags.0.name`); inside a field whose keys are
    documented (`author`), the next step must be one of them."""
    head = path[0]
    if head not in fields:
        return False
    return len(path) == 1 or head not in NESTED or path[1] in NESTED[head]


def _candidates(path: list[str], fields: frozenset[str]) -> list[str]:
    """Names to suggest: the documented keys of `author` for `author.typ`, else all."""
    if path[0] in NESTED and path[0] in fields:
        return sorted(f"{path[0]}.{name}" for name in NESTED[path[0]])
    nested = [f"{head}.{name}" for head in NESTED if head in fields for name in NESTED[head]]
    return sorted(fields) + sorted(nested)
