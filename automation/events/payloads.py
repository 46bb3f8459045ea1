"""amoCRM webhook bodies → typed events. Pure: no I/O, no Flask, no database.

`decode_body` is the entry point. `automation.form` turns the body (amoCRM's PHP-style
form, or JSON of the same shape) into nested dicts and lists; this module turns every
item of every `<group>[<action>]` of that tree into one `Event`, with the ids,
timestamps and flags converted from the strings amoCRM sends.

What the decoder accepts must be storable on every backend, or the endpoint would answer
500 on SQLite and 503 (which amoCRM retries forever) on PostgreSQL for the same body. So
besides what `automation.form` refuses (NUL characters, JSON integers beyond 64 bits):

* Ids that are stored in BIGINT columns must fit a signed 64-bit integer: the account id
  (`deliveries.account_id`) and every entity id an event carries (`Event.entities`, the
  `launches.entity_id` of its launches). One that does not is an error naming the field.
  So is `true`/`false` where one of these ids belongs: JSON `"id": true` is not 1.
* Other numbers are only compared, never stored: a digit string beyond 64 bits there is
  kept as text, like any value that does not look like its kind.
* An entity id of 0 or below is no amoCRM id (they are positive): it names no entity,
  so no launch is built on it and nothing is stored from it. It is not an error.
* `account[subdomain]` fits its column (`SUBDOMAIN_LENGTH` characters) or is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from automation.errors import PayloadError
from automation.events.form import parse_form, parse_json, shown_number
from automation.limits import INT64_MAX, INT64_MIN, SUBDOMAIN_LENGTH

#: Payload group key → entity family. amoCRM spells some groups two ways (§1.2).
GROUP_FAMILIES: Mapping[str, str] = {
    "leads": "lead",
    "contacts": "contact",
    "companies": "company",
    "customers": "customer",
    "task": "task",
    "tasks": "task",
    "talk": "talk",
    "message": "message",
    "outgoing_message": "outgoing_message",
    "unsorted": "unsorted",
}

#: Payload action key → normalised verb of the event type.
ACTION_VERBS: Mapping[str, str] = {
    "add": "added",
    "update": "updated",
    "delete": "deleted",
    "restore": "restored",
    "status": "status_changed",
    "responsible": "responsible_changed",
    "note": "note_added",
}

_CRM_ACTIONS = ("add", "update", "delete", "restore", "status", "responsible", "note")
#: Which actions each family knows; anything else decodes as an `unknown` event.
FAMILY_ACTIONS: Mapping[str, tuple[str, ...]] = {
    "lead": _CRM_ACTIONS,
    "contact": _CRM_ACTIONS,
    "company": _CRM_ACTIONS,
    "customer": _CRM_ACTIONS,
    "task": _CRM_ACTIONS,
    "talk": ("add", "update"),
    "message": ("add",),
    "outgoing_message": ("add",),
    "unsorted": ("add", "update", "delete"),
}

#: Every event type a rule may name, plus `unknown`.
EVENT_TYPES: tuple[str, ...] = (
    *(
        f"{family}.{ACTION_VERBS[action]}"
        for family, actions in FAMILY_ACTIONS.items()
        for action in actions
    ),
    "unknown",
)

#: amoCRM `entity_type` codes of the salesbot API (protocol §3). The one table.
#: contact 1 and lead 2 are documented; company 3 and customer 12 are amoCRM's
#: element-type codes, accepted by the API only on some accounts.
ENTITY_TYPE_CODES: Mapping[str, int] = {"contact": 1, "lead": 2, "company": 3, "customer": 12}
ENTITY_KINDS: Mapping[int, str] = {code: kind for kind, code in ENTITY_TYPE_CODES.items()}

_NUMERIC_KEYS = frozenset(
    {
        *("id", "ID", "element_type", "price", "rate", "enum", "group_id"),
        *("created_at", "updated_at", "date_create", "last_modified", "date", "complete_till"),
    }
)
_FLAG_KEYS = frozenset({"is_read", "is_in_work", "is_completed"})
_FLAGS = {"1": True, "0": False, "true": True, "false": False}
_CHARSET_RE = re.compile(r"""charset\s*=\s*["']?([^"';\s]*)""", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Account:
    """The `account` block: who sent the webhook."""

    id: int | None = None
    subdomain: str | None = None
    base_url: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One item of one group of a webhook body, e.g. one lead of `leads[status]`.

    `data` is the item with ids, timestamps and flags converted from strings;
    `entities` maps `lead`/`contact`/`company`/`customer` to the ids this event
    carries, which is what a rule's `launch.entity` picks from.
    """

    type: str
    group: str
    index: int
    data: Mapping[str, Any]
    account: Account
    entities: Mapping[str, int] = field(default_factory=dict)
    change: str = ""

    @property
    def family(self) -> str:
        return self.type.split(".", 1)[0]

    @property
    def id(self) -> int | str | None:
        value = self.data.get("id", self.data.get("talk_id", self.data.get("uid")))
        return value if isinstance(value, int | str) else None


@dataclass(frozen=True, slots=True)
class Payload:
    """A decoded webhook body: the account block and every event in body order."""

    account: Account
    events: tuple[Event, ...]
    data: Mapping[str, Any]

    @property
    def recognized(self) -> bool:
        """True when at least one event is of a known type."""
        return any(event.type != "unknown" for event in self.events)


# --------------------------------------------------------------------------- decoding


def decode_body(body: bytes, content_type: str = "application/x-www-form-urlencoded") -> Payload:
    """Decode a webhook body (form or JSON) into a `Payload`.

    Raises `PayloadError` with a message naming the offending field for anything that
    is not an amoCRM webhook; never any other exception. Pass the whole content type,
    parameters included: a declared charset other than UTF-8 is named when the body
    turns out not to be UTF-8.
    """
    media_type, _, parameters = content_type.partition(";")
    found = _CHARSET_RE.search(parameters) if parameters else None
    charset = found[1] if found else None
    if media_type.strip().lower() == "application/json":
        return payload_from_data(parse_json(body, charset))
    return payload_from_data(parse_form(body, charset))


# ------------------------------------------------------------------------ typed events


def payload_from_data(data: Mapping[str, Any]) -> Payload:
    """Turn nested webhook data into a `Payload` with one event per item."""
    account = _account(data.get("account"))
    events: list[Event] = []
    for group, content in data.items():
        if group == "account":
            continue
        events.extend(_group_events(group, content, account))
    if not events and "account" not in data:
        raise PayloadError("not an amoCRM webhook: no 'account' block and no event group")
    return Payload(account=account, events=tuple(events), data=data)


def _account(block: Any) -> Account:
    if block is None:
        return Account()
    if not isinstance(block, Mapping):
        raise PayloadError("field 'account' must be a group such as account[id]=…")
    links = block.get("_links")
    self_link = links.get("self") if isinstance(links, Mapping) else None
    subdomain = block.get("subdomain")
    if isinstance(subdomain, str) and len(subdomain) > SUBDOMAIN_LENGTH:
        raise PayloadError(
            f"field 'account[subdomain]': {len(subdomain)} characters, "
            f"longer than the {SUBDOMAIN_LENGTH} a subdomain may have"
        )
    return Account(
        id=_to_int(block.get("id"), "account[id]"),
        subdomain=subdomain if isinstance(subdomain, str) and subdomain else None,
        base_url=self_link if isinstance(self_link, str) and self_link else None,
    )


def _group_events(group: str, content: Any, account: Account) -> list[Event]:
    family = GROUP_FAMILIES.get(group)
    if family is None or not isinstance(content, Mapping):
        return [_unknown(group, content, account)]
    events: list[Event] = []
    for action, items in content.items():
        label = f"{group}[{action}]"
        if action not in FAMILY_ACTIONS[family] or not isinstance(items, list | Mapping):
            events.append(_unknown(label, items, account))
            continue
        rows = enumerate(items) if isinstance(items, list) else items.items()
        for index, (key, item) in enumerate(rows):
            event = _item_event(family, action, (label, index, key), item, account)
            events.append(event)
            if _moved_stage(event, action):
                events.append(replace(event, type=f"{event.family}.status_changed"))
    return events


def _moved_stage(event: Event, action: str) -> bool:
    """An update that changed the stage is also a stage change (protocol §1.2).

    Subscribing `update_lead` alone then still fires `lead.status_changed` rules, and
    when `status_lead` delivers the same move too, both carry the same change key.
    """
    old = event.data.get("old_status_id")
    return action == "update" and old is not None and old != event.data.get("status_id")


def _unknown(group: str, content: Any, account: Account) -> Event:
    return Event(type="unknown", group=group, index=0, data={"raw": content}, account=account)


def _item_event(
    family: str, action: str, where: tuple[str, int, Any], item: Any, account: Account
) -> Event:
    """One item's event; `where` is its group label, index and key in the group."""
    label, index, key = where
    bare = not isinstance(item, Mapping)  # a bare id, as some delete payloads send
    data = _normalise({"id": item} if bare else item)
    if family == "contact" and data.get("type") == "company":
        family = "company"
    # A note's own id is the note's; the entity it belongs to is `element_id`.
    id_field: tuple[str, ...] = ("id",)
    if action == "note":
        id_field = ("element_id",)
        if isinstance(data.get("note"), Mapping):
            if "element_id" not in data:
                id_field = ("note", "element_id")
            data = {**data["note"], **{k: v for k, v in data.items() if k != "note"}}
    # Only that id: a note names no other entity (a task note's own fields included).
    source = {"element_id": data.get("element_id")} if action == "note" else data
    try:
        entities = entity_ids(family, source, id_field[-1])
    except UnfitId as exc:
        inner = id_field if exc.path == id_field[-1:] else exc.path  # a note's own path
        path = [label, str(key)] if bare else [label, str(key), *inner]
        raise PayloadError(f"field {_join(path)!r}: {exc.problem}") from None
    return Event(
        type=f"{family}.{ACTION_VERBS[action]}",
        group=label,
        index=index,
        data=data,
        account=account,
        entities=entities,
        change=change_key(family, action, data),
    )


def _join(path: list[str]) -> str:
    """`["leads[status]", "0", "id"]` → `leads[status][0][id]`."""
    return path[0] + "".join(f"[{part}]" for part in path[1:])


def _normalise(value: Any, key: str = "") -> Any:
    """Convert the strings amoCRM sends into ints and bools where the key says so.

    A value that does not look like its kind (a timestamp that is not digits) is kept
    as sent rather than rejected: the webhook is still stored, and a rule comparing it
    as a number simply does not match. Other scalars (from JSON) are kept as they are.
    """
    if isinstance(value, str):
        return _convert(key, value)
    # `dict` and `list` first: the `Mapping` ABC check is slow, and these are the norm.
    if type(value) is dict or (type(value) is not list and isinstance(value, Mapping)):
        return _normalise_map(value)
    if isinstance(value, list):
        return [_normalise(item, key) for item in value]
    return value


def _normalise_map(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """`_normalise` of every value, with the strings (most values) converted in line.

    One call per id instead of four, and none for a string under an ordinary key: in
    a bulk webhook this loop runs for every field.
    """
    result: dict[str, Any] = {}
    for key, value in mapping.items():
        if type(value) is not str:
            result[key] = _normalise(value, key)
        elif key in _NUMERIC_KEYS or key.endswith("_id"):
            number = _parse_int(value)
            result[key] = value if number is None else number
        elif key in _FLAG_KEYS:
            result[key] = _FLAGS.get(value, value)
        else:
            result[key] = value
    return result


def _convert(key: str, text: str) -> Any:
    """A flag → bool, an id or a timestamp → int, by the key it was sent under."""
    if key in _FLAG_KEYS:
        return _FLAGS.get(text, text)
    if key in _NUMERIC_KEYS or key.endswith("_id"):
        return _int_or_text(text)
    return text


def _int_or_text(text: str) -> int | str:
    """Ids are digits, except message and chat ids, which are UUIDs: keep those."""
    number = _parse_int(text)
    return text if number is None else number


def _parse_int(text: str) -> int | None:
    """`"42"`, `"-7"` → int; anything else (`"--5"`, `"¹"`, 2**63 and more) → None.

    ASCII digits only, with an optional minus: what `-?[0-9]+` matches, without the
    regex call (`isdigit` alone would accept `"¹"` and `"٣"`, which `int` rejects or
    reads differently). Only what fits 64 bits, as every amoCRM number does: a bigger
    one could not be stored as an id (see the module docstring).
    """
    if not (text.isdigit() or (text[1:].isdigit() and text[0] == "-")) or not text.isascii():
        return None
    if len(text) < 19:  # 18 digits, or a minus and 17: always within 64 bits
        return int(text)
    return _parse_long(text)


def _parse_long(text: str) -> int | None:
    """`_parse_int` of 19 characters or more: None beyond 64 bits."""
    try:
        number = int(text)
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        return None
    return number if INT64_MIN <= number <= INT64_MAX else None


def _is_digits(value: Any) -> bool:
    """Whether `value` is a string of ASCII digits: an id, if it is not too big for one."""
    return isinstance(value, str) and value.isdigit() and value.isascii()


def _to_int(value: Any, path: str) -> int | None:
    """The account id, which is stored: within 64 bits, and never a boolean."""
    if value is None or value == "":
        return None
    number = value if type(value) is int else _parse_int(value) if isinstance(value, str) else None
    if number is not None and INT64_MIN <= number <= INT64_MAX:
        return number
    digits = value.removeprefix("-") if isinstance(value, str) else None
    if type(value) is int or _is_digits(digits):
        raise PayloadError(f"field {path!r}: {shown_number(str(value))} is out of range")
    raise PayloadError(f"field {path!r}: expected a number, got {value!r}")


# ---------------------------------------------------------------- entities and changes


class UnfitId(PayloadError):
    """An entity id that cannot be stored; `path` is its field within the item."""

    def __init__(self, path: tuple[str, ...], problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"field {_join(list(path))!r}: {problem}")


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
        _put(found, "lead", _dig(data, "data", "leads", 0, "id"), ("data", "leads", "0", "id"))
        _put(found, "lead", _dig(data, "accept_result", "leads", 0), _ACCEPTED_LEAD)
        _put(found, "contact", _dig(data, "data", "contacts", 0, "id"), _FIRST_CONTACT)
    return found


def _entity_kind(value: Any) -> str | None:
    """`leads`, `lead`, `2` → `lead`; `contacts`, `contact`, `1` → `contact`."""
    if isinstance(value, int):
        return ENTITY_KINDS.get(value)
    if isinstance(value, str):
        name = value.removesuffix("s") if value not in ("companies",) else "company"
        if name in ENTITY_TYPE_CODES:
            return name
        number = _parse_int(value)
        if number is not None:
            return ENTITY_KINDS.get(number)
    return None


def _put(found: dict[str, int], kind: str, value: Any, path: tuple[str, ...]) -> None:
    """Record `value`, found at `path`, as the event's `kind` id, unless one was already.

    Ids of 0 and below are no amoCRM ids and are skipped; ids that would be stored
    but cannot be (beyond 64 bits, kept as text by `_parse_int`; a boolean) raise.
    """
    if kind in found:
        return
    if type(value) is int:
        if value > INT64_MAX:
            raise UnfitId(path, f"{shown_number(str(value))} is out of range")
        if value > 0:
            found[kind] = value
    elif isinstance(value, bool):
        raise UnfitId(path, f"expected an id, got {value!r}")
    elif _is_digits(value) and _parse_int(value) is None:
        raise UnfitId(path, f"{shown_number(value)} is out of range")


def _dig(data: Any, *path: str | int) -> Any:
    for step in path:
        if isinstance(step, int) and isinstance(data, list) and len(data) > step:
            data = data[step]
        elif isinstance(step, str) and isinstance(data, Mapping):
            data = data.get(step)
        else:
            return None
    return data


def change_key(family: str, action: str, data: Mapping[str, Any]) -> str:
    """Identify the change an event reports, independent of the group it came in.

    A stage move delivered both as `leads[update]` and `leads[status]` carries the same
    lead id, modification time and stage, so both give the same key; de-duplication of
    launches relies on that. Messages and talks are identified by their own ids.
    """
    if family in ("message", "outgoing_message"):
        return f"{family}:{data.get('id')}"
    if family == "talk":
        return f"talk:{data.get('talk_id')}:{action}"
    if family == "unsorted":
        return f"unsorted:{data.get('uid')}:{action}"
    stamp = data.get("updated_at") or data.get("last_modified")
    if action in ("delete", "restore") or stamp is None:
        return f"{family}:{data.get('id')}:{action}:{stamp or ''}"
    return f"{family}:{data.get('id')}@{stamp}:s{data.get('status_id', '')}"
