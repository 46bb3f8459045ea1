"""amoCRM webhook bodies → typed events. Pure: no I/O, no Flask, no database.

`decode_body` is the entry point. `automation.form` turns the body (amoCRM's PHP-style
form, or JSON of the same shape) into nested dicts and lists; this module turns every
item of every `<group>[<action>]` of that tree into one `Event`, with the ids,
timestamps and flags converted from the strings amoCRM sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from automation.errors import PayloadError
from automation.form import parse_form, parse_json

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
    is not an amoCRM webhook; never any other exception.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    data = parse_json(body) if media_type == "application/json" else parse_form(body)
    return payload_from_data(data)


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
        rows = items if isinstance(items, list) else list(items.values())
        for index, item in enumerate(rows):
            event = _item_event(family, action, label, index, item, account)
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
    family: str, action: str, label: str, index: int, item: Any, account: Account
) -> Event:
    if not isinstance(item, Mapping):  # a bare id, as some delete payloads send
        item = {"id": item}
    data = _normalise(item)
    if family == "contact" and data.get("type") == "company":
        family = "company"
    if action == "note" and isinstance(data.get("note"), Mapping):
        data = {**data["note"], **{k: v for k, v in data.items() if k != "note"}}
    event_type = f"{family}.{ACTION_VERBS[action]}"
    return Event(
        type=event_type,
        group=label,
        index=index,
        data=data,
        account=account,
        # A note's own id is the note's; the entity it belongs to is `element_id`.
        entities=entity_ids(family, {"id": data.get("element_id")} if action == "note" else data),
        change=change_key(family, action, data),
    )


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
    """`"42"`, `"-7"` → int; anything else (`"--5"`, `"¹"`, 5,000 digits) → None.

    ASCII digits only, with an optional minus: what `-?[0-9]+` matches, without the
    regex call (`isdigit` alone would accept `"¹"` and `"٣"`, which `int` rejects or
    reads differently).
    """
    if not (text.isdigit() or (text[1:].isdigit() and text[0] == "-")) or not text.isascii():
        return None
    try:
        return int(text)
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        return None


def _to_int(value: Any, path: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    number = _parse_int(value) if isinstance(value, str) else None
    if number is not None:
        return number
    raise PayloadError(f"field {path!r}: expected a number, got {value!r}")


# ---------------------------------------------------------------- entities and changes


def entity_ids(family: str, data: Mapping[str, Any]) -> dict[str, int]:
    """Which lead/contact/company/customer ids an event carries.

    A lead event names its lead; a talk or message names its lead (or contact) in
    `entity_type`/`entity_id` and its chat contact in `contact_id`; an unsorted item
    names the lead it created and its first contact.
    """
    found: dict[str, int] = {}
    if family in ENTITY_TYPE_CODES:
        _put(found, family, data.get("id"))
    elif family in ("talk", "message", "outgoing_message"):
        kind = _entity_kind(data.get("entity_type", data.get("element_type")))
        if kind:
            _put(found, kind, data.get("entity_id", data.get("element_id")))
        _put(found, "contact", data.get("contact_id"))
    elif family == "task":
        kind = _entity_kind(data.get("element_type"))
        if kind:
            _put(found, kind, data.get("element_id"))
    elif family == "unsorted":
        _put(found, "lead", data.get("lead_id"))
        _put(found, "lead", _dig(data, "data", "leads", 0, "id"))
        _put(found, "lead", _dig(data, "accept_result", "leads", 0))
        _put(found, "contact", _dig(data, "data", "contacts", 0, "id"))
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


def _put(found: dict[str, int], kind: str, value: Any) -> None:
    if kind not in found and isinstance(value, int) and not isinstance(value, bool) and value > 0:
        found[kind] = value


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
