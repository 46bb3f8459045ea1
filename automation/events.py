"""amoCRM webhook bodies → typed events. Pure: no I/O, no Flask, no database.

amoCRM posts `application/x-www-form-urlencoded` bodies built by PHP's
`http_build_query`: every value is a string and the structure lives in bracket keys
(`leads[status][0][id]=…`). We split the form exactly as `urllib.parse.parse_qsl` does
(but several times faster on bulk bodies of ~10,000 fields), rebuild the nesting
ourselves (no library knows amoCRM's shape), then turn every item of every
`<group>[<action>]` into one `Event`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote as urllib_unquote

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
#: `[` and `]` as PHP encodes them in keys.
_OPEN, _CLOSE = "%5B", "%5D"


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
    stay maps. A later duplicate key replaces an earlier one, as in PHP. The result is
    what `parse_qsl(text.strip(), keep_blank_values=True)` plus the bracket rebuild
    give; `tests/test_properties.py` checks that against the plain implementation.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not UTF-8 (byte {exc.start})") from exc
    keys, values = form_fields(text)
    tree = _FormTree()
    tree.fill(keys, unquote_all(values))
    return tree.finish()


def form_fields(text: str) -> tuple[list[str], list[str]]:
    """Split a form into its still percent-encoded keys and values, `+` already a space.

    The same split as `parse_qsl(..., keep_blank_values=True)`: `&` separates fields
    (`;` does not), empty fields are skipped, a field without `=` has an empty value.
    `+` is replaced in the whole text at once, which is what `parse_qsl` does to every
    name and value before unquoting them.
    """
    text = text.strip()
    pairs = text.replace("+", " ").split("&") if text else []
    if len(pairs) > MAX_FIELDS:
        raise PayloadError("body is not a form: Max number of fields exceeded")
    # A loop, not a list of `partition` tuples: on a 100,000-field body those tuples
    # alone set off hundreds of garbage collections.
    keys: list[str] = []
    values: list[str] = []
    for pair in pairs:
        if pair:
            key, _, value = pair.partition("=")
            keys.append(key)
            values.append(value)
    return keys, values


def unquote_all(texts: list[str]) -> list[str]:
    """`[unquote(text) for text in texts]`, with one decoder call for the whole list.

    Percent-decoding is linear and local: decoding `a&b` gives `unquote(a) & unquote(b)`
    (`&` is ASCII, so no escape and no UTF-8 sequence spans it). The pieces hold no `&`
    of their own, so splitting the decoded whole gives them back unless some `%26`
    decoded to an extra `&`; the piece count tells, and then each is decoded alone.
    """
    if not texts:
        return []
    decoded = unquote("&".join(texts)).split("&")
    if len(decoded) == len(texts):
        return decoded
    return [unquote(text) for text in texts]


def unquote(text: str) -> str:
    """`urllib.parse.unquote(text)`, in C for the ASCII text a PHP encoder writes.

    `%XX` is rewritten as the `\\xXX` escape of the `unicode_escape` codec (after
    doubling every backslash, so no other escape exists), which yields one character
    U+0000..U+00FF per byte; Latin-1 turns those back into the bytes, decoded as UTF-8
    with `replace`, exactly what `unquote` does. A `%` not followed by two hex digits
    makes the codec fail, and `urllib` then keeps it as the literal it is.
    """
    if "%" not in text:
        return text
    if text.isascii():
        escaped = text.replace("\\", "\\\\").replace("%", "\\x").encode("ascii")
        try:
            raw = escaped.decode("unicode_escape")
        except UnicodeDecodeError:
            return urllib_unquote(text)
        return raw.encode("latin-1").decode("utf-8", "replace")
    return urllib_unquote(text)


class _FormTree:
    """The nested dicts of a form, built key by key, densified at the end.

    A bulk webhook repeats the same groups thousands of times
    (`leads%5Bstatus%5D%5B7%5D%5Bname%5D`, `…%5Bprice%5D`), so the group a key's
    still-encoded prefix names is remembered: most fields then cost one `rpartition` and
    one dict lookup instead of decoding, splitting and walking the key. Only "plain"
    keys, written `head%5Bpart%5D…` with no other `%`, `[` or `]` and no empty part, take
    that path; everything else, and every error, goes through `split_key` and
    `_insert`, so the messages stay the same.
    """

    __slots__ = ("_groups", "root")

    def __init__(self) -> None:
        self.root: dict[str, Any] = {}
        #: Encoded prefix of a plain key → the group it names.
        self._groups: dict[str, dict[str, Any]] = {}

    def fill(self, keys: list[str], values: list[str]) -> None:
        """Store each value under its still percent-encoded key; a later one wins.

        In line rather than a method per field: this loop runs once per field.
        """
        groups = self._groups
        for key, value in zip(keys, values, strict=True):
            prefix, opened, last = key.rpartition(_OPEN)
            name = last[:-3]
            if opened and last.endswith(_CLOSE) and (name.isidentifier() or _is_plain(name)):
                group = groups.get(prefix)
                if group is None:
                    group = self._group(prefix)
                if group is not None and type(group.get(name)) is not dict:
                    group[name] = value
                    continue
            decoded = unquote(key)
            _insert(self.root, split_key(decoded), value, decoded)

    def _group(self, prefix: str) -> dict[str, Any] | None:
        """The group a plain encoded prefix names, made if new; None when not plain.

        None also when a value sits where a group should, or the key is too deep: the
        caller then takes the general path, which raises the right error. Every level
        is checked on the way up, before any group is made on the way down.
        """
        if prefix.count(_OPEN) > MAX_DEPTH - 2:  # a child would be too deep
            return None
        parent_prefix, opened, last = prefix.rpartition(_OPEN)
        name = last[:-3] if opened else last
        if not (name.isidentifier() or _is_plain(name)):
            return None
        if not opened:
            parent: dict[str, Any] | None = self.root
        elif last.endswith(_CLOSE):
            parent = self._groups.get(parent_prefix)
            if parent is None:
                parent = self._group(parent_prefix)
        else:
            return None
        if parent is None:
            return None
        group = parent.get(name)
        if group is None:
            group = parent[name] = {}
        elif type(group) is not dict:
            return None
        self._groups[prefix] = group
        return group

    def finish(self) -> dict[str, Any]:
        """Turn dense groups into lists and return the root, which stays a map."""
        _densify_groups(self.root)
        return self.root


def _densify_groups(group: dict[str, Any]) -> None:
    """Replace every dense group inside `group` by a list, children first, in place.

    In place, as the tree is our own: no copy of every map as `_densify` makes. Keys
    nest at most `MAX_DEPTH` deep, so the recursion is shallow, and only values are
    replaced during the loop, never keys added or removed.
    """
    for name, child in group.items():
        if type(child) is dict:
            _densify_groups(child)
            items = _as_list(child)
            if items is not None:
                group[name] = items


def _is_plain(part: str) -> bool:
    """Whether a key part is non-empty and needs no decoding or bracket parsing.

    `part.isidentifier()` implies it and is quicker, so hot loops try that first.
    """
    return bool(part) and "%" not in part and "[" not in part and "]" not in part


def split_key(key: str) -> list[str]:
    """`leads[status][0][id]` → `["leads", "status", "0", "id"]`."""
    head, bracket, rest = key.partition("[")
    if not bracket:
        return [key]
    if head and rest.endswith("]"):
        # Fast path: `head[a][b]` is `head[` + `a][b` + `]`, valid when the only
        # brackets inside are the `][` separators.
        parts = rest[:-1].split("][")
        inner = len(parts) - 1
        if rest.count("[") == inner and rest.count("]") == inner + 1 and inner < MAX_DEPTH - 1:
            return [head, *parts]
    return _split_key_slowly(key, head)


def _split_key_slowly(key: str, head: str) -> list[str]:
    """`split_key` for keys off the fast path; names what is wrong with a bad key."""
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
    """Store `value` at `parts`, making the groups on the way."""
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
    dense = _as_list(items)
    return items if dense is None else dense


def _as_list(group: dict[str, Any]) -> list[Any] | None:
    """`{"0": a, "1": b}` (in any order) → `[a, b]`; None unless keys are `0..n-1`."""
    if "0" not in group:
        return None
    indexes = list(map(str, range(len(group))))
    if list(group) == indexes:
        return list(group.values())
    if group.keys() == set(indexes):
        return [group[index] for index in indexes]
    return None


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
