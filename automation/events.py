"""amoCRM webhook bodies → typed events. Pure: no I/O, no Flask, no database.

amoCRM posts `application/x-www-form-urlencoded` bodies built by PHP's
`http_build_query`: every value is a string and the structure lives in bracket keys
(`leads[status][0][id]=…`). We let the standard library split the form, rebuild the
nesting ourselves (no library knows amoCRM's shape), then turn every item of every
`<group>[<action>]` into one `Event`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

from automation.errors import PayloadError

#: Deepest bracket nesting we accept; real payloads reach 7 levels.
MAX_DEPTH = 32
#: Most form fields in one body; a 500-lead bulk edit has about 10,000.
MAX_FIELDS = 200_000

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
_KEY_RE = re.compile(r"\[([^\[\]]*)\]")
_INT_RE = re.compile(r"-?[0-9]+")


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


def parse_json(body: bytes) -> dict[str, Any]:
    """Parse a JSON body with the same shape as the decoded form."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not UTF-8 (byte {exc.start})") from exc
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PayloadError(f"JSON body must be an object, got {type(data).__name__}")
    if _too_deep(data):
        raise PayloadError(f"JSON body nested deeper than {MAX_DEPTH} levels")
    return {str(key): _densify(value) for key, value in data.items()}


def _too_deep(data: Any) -> bool:
    """Whether containers nest deeper than `MAX_DEPTH`, as a form key may not either.

    Checked without recursion: `json.loads` accepts ~1,000 levels, more than the
    recursive `_densify` and `_normalise` below can walk.
    """
    stack = [(data, 1)]
    while stack:
        node, level = stack.pop()
        if level > MAX_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_form(body: bytes) -> dict[str, Any]:
    """Parse a PHP-style form body into nested dicts and lists.

    Dense `0..n-1` maps become lists; id-keyed maps (`linked_leads_id[27754620]`)
    stay maps. A later duplicate key replaces an earlier one, as in PHP.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not UTF-8 (byte {exc.start})") from exc
    try:
        pairs = parse_qsl(text.strip(), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError as exc:
        raise PayloadError(f"body is not a form: {exc}") from exc
    root: dict[str, Any] = {}
    for key, value in pairs:
        _insert(root, split_key(key), value, key)
    return {key: _densify(value) for key, value in root.items()}


def split_key(key: str) -> list[str]:
    """`leads[status][0][id]` → `["leads", "status", "0", "id"]`."""
    head, bracket, _rest = key.partition("[")
    if not bracket:
        return [key]
    parts = [head]
    position = len(head)
    for match in _KEY_RE.finditer(key, position):
        if match.start() != position:
            break
        parts.append(match.group(1))
        position = match.end()
    if position != len(key) or not head:
        raise PayloadError(f"field {key!r}: malformed bracket key")
    if len(parts) > MAX_DEPTH:
        raise PayloadError(f"field {key!r}: nested deeper than {MAX_DEPTH} levels")
    return parts


def _insert(root: dict[str, Any], parts: list[str], value: str, key: str) -> None:
    node = root
    for depth, part in enumerate(parts[:-1]):
        if part == "":
            part = str(len(node))
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = _join_key(parts[: depth + 1])
            raise PayloadError(f"field {key!r}: {prefix!r} is both a value and a group")
        node = child
    last = parts[-1] if parts[-1] != "" else str(len(node))
    if isinstance(node.get(last), dict):
        raise PayloadError(f"field {key!r}: {key!r} is both a value and a group")
    node[last] = value


def _join_key(parts: list[str]) -> str:
    return parts[0] + "".join(f"[{part}]" for part in parts[1:])


def _densify(value: Any) -> Any:
    """Turn `{"0": a, "1": b}` into `[a, b]`, recursively; leave other maps alone."""
    if isinstance(value, list):
        return [_densify(item) for item in value]
    if not isinstance(value, dict):
        return value
    items = {str(key): _densify(item) for key, item in value.items()}
    if items and all(key == str(index) for index, key in enumerate(sorted(items, key=_num))):
        return [items[str(index)] for index in range(len(items))]
    return items


def _num(key: str) -> tuple[int, str]:
    if key.isascii() and key.isdigit() and len(key) < 10:
        return (int(key), "")
    return (1 << 62, key)


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
    as a number simply does not match.
    """
    if isinstance(value, Mapping):
        return {k: _normalise(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v, key) for v in value]
    if key in _FLAG_KEYS:
        return _FLAGS.get(value, value) if isinstance(value, str) else value
    if key in _NUMERIC_KEYS or key.endswith("_id"):
        return _maybe_int(value)
    return value


def _maybe_int(value: Any) -> Any:
    """Ids are digits, except message and chat ids, which are UUIDs: keep those."""
    number = _parse_int(value) if isinstance(value, str) else None
    return value if number is None else number


def _parse_int(text: str) -> int | None:
    """`"42"`, `"-7"` → int; anything else (`"--5"`, `"¹"`, 5,000 digits) → None."""
    if not _INT_RE.fullmatch(text):
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
