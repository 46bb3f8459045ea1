"""Which lead, contact, company or customer an event is about. Pure: no I/O.

These ids go into BIGINT columns with the launches built on them, so one that could
not be stored is an error naming its field (`UnfitId`); an id of 0 or below names no
entity and is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automation.errors import UnfitId
from automation.events.families import ENTITY_KINDS, ENTITY_TYPE_CODES
from automation.events.form import shown_number
from automation.events.values import is_digits, parse_int
from automation.limits import INT64_MAX


def field_path(path: list[str]) -> str:
    """`["leads[status]", "0", "id"]` → `leads[status][0][id]`."""
    return path[0] + "".join(f"[{part}]" for part in path[1:])


#: Field paths, for error messages, of two ids an unsorted item carries.
_ACCEPTED_LEAD = ("accept_result", "leads", "0")
_FIRST_CONTACT = ("data", "contacts", "0", "id")


def entity_ids(family: str, data: Mapping[str, Any], id_field: str = "id") -> dict[str, int]:
    """Which lead/contact/company/customer ids an event carries.

    A lead event names its lead (a note event: in `id_field`, `element_id`); a talk or
    message names its lead (or contact) in `entity_type`/`entity_id` and its chat
    contact in `contact_id`; an unsorted item names the lead it created and its first
    contact. These ids are stored with launches, so one that would be stored but does
    not fit 64 bits (or is a boolean) raises `UnfitId`.
    """
    found: dict[str, int] = {}
    if family in ENTITY_TYPE_CODES:
        _put(found, family, data.get(id_field), (id_field,))
    elif family in ("talk", "message", "outgoing_message"):
        kind = _entity_kind(data.get("entity_type", data.get("element_type")))
        if kind:
            name = "entity_id" if "entity_id" in data else "element_id"
            _put(found, kind, data.get(name), (name,))
        _put(found, "contact", data.get("contact_id"), ("contact_id",))
    elif family == "task":
        kind = _entity_kind(data.get("element_type"))
        if kind:
            _put(found, kind, data.get("element_id"), ("element_id",))
    elif family == "unsorted":
        _put(found, "lead", data.get("lead_id"), ("lead_id",))
        _put(found, "lead", dig(data, "data", "leads", 0, "id"), ("data", "leads", "0", "id"))
        _put(found, "lead", dig(data, "accept_result", "leads", 0), _ACCEPTED_LEAD)
        _put(found, "contact", dig(data, "data", "contacts", 0, "id"), _FIRST_CONTACT)
    return found


def _entity_kind(value: Any) -> str | None:
    """`leads`, `lead`, `2` → `lead`; `contacts`, `contact`, `1` → `contact`."""
    if isinstance(value, int):
        return ENTITY_KINDS.get(value)
    if isinstance(value, str):
        name = value.removesuffix("s") if value not in ("companies",) else "company"
        if name in ENTITY_TYPE_CODES:
            return name
        number = parse_int(value)
        if number is not None:
            return ENTITY_KINDS.get(number)
    return None


def _put(found: dict[str, int], kind: str, value: Any, path: tuple[str, ...]) -> None:
    """Record `value`, found at `path`, as the event's `kind` id, unless one was already.

    Ids of 0 and below are no amoCRM ids and are skipped; ids that would be stored
    but cannot be (beyond 64 bits, kept as text by `parse_int`; a boolean) raise. A
    digit string is an id too: a bare list item (`accept_result[leads][0]=…`) has no
    key of its own that says it holds one, so `values.normalise` leaves it as text.
    """
    if kind in found:
        return
    if is_digits(value):
        number = parse_int(value)
        if number is None:
            raise UnfitId(path, f"{shown_number(value)} is out of range")
        value = number
    if type(value) is int:
        if value > INT64_MAX:
            raise UnfitId(path, f"{shown_number(str(value))} is out of range")
        if value > 0:
            found[kind] = value
    elif isinstance(value, bool):
        raise UnfitId(path, f"expected an id, got {value!r}")


def dig(data: Any, *path: str | int) -> Any:
    """`data[path[0]][path[1]]…`, or None where the body has nothing there."""
    for step in path:
        if isinstance(step, int) and isinstance(data, list) and len(data) > step:
            data = data[step]
        elif isinstance(step, str) and isinstance(data, Mapping):
            data = data.get(step)
        else:
            return None
    return data
