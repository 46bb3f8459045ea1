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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from automation.errors import PayloadError, UnfitId
from automation.events.changes import change_key, delivery_day, is_stage_move
from automation.events.entities import entity_ids, field_path
from automation.events.families import (
    ACTION_VERBS,
    ENTITY_KINDS,
    ENTITY_TYPE_CODES,
    EVENT_TYPES,
    FAMILY_ACTIONS,
    GROUP_FAMILIES,
)
from automation.events.form import parse_form
from automation.events.jsonbody import parse_json
from automation.events.values import normalise, stored_int
from automation.limits import SUBDOMAIN_LENGTH

__all__ = [
    "ACTION_VERBS",
    "ENTITY_KINDS",
    "ENTITY_TYPE_CODES",
    "EVENT_TYPES",
    "FAMILY_ACTIONS",
    "GROUP_FAMILIES",
    "Account",
    "Event",
    "Payload",
    "decode_body",
    "entity_ids",
    "payload_from_data",
]

_CHARSET_RE = re.compile(r"""charset\s*=\s*["']?([^"';\s]*)""", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Account:
    """The `account` block: who sent the webhook.

    `id_field` names where the id came from: `account[id]`, or, in older bodies that
    carry only `account[subdomain]`, the first item's `account_id`
    (`leads[add][0][account_id]`).
    """

    id: int | None = None
    subdomain: str | None = None
    base_url: str | None = None
    id_field: str = "account[id]"


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


def decode_body(
    body: bytes,
    content_type: str = "application/x-www-form-urlencoded",
    *,
    received_at: datetime,
) -> Payload:
    """Decode a webhook body (form or JSON), delivered at `received_at`, into a `Payload`.

    Raises `PayloadError` with a message naming the offending field for anything that
    is not an amoCRM webhook; never any other exception. Pass the whole content type,
    parameters included: a declared charset other than UTF-8 is named when the body
    turns out not to be UTF-8. `received_at` (when the delivery first arrived, also on
    a replay) keys changes the body cannot tell apart by itself (`events.changes`).
    """
    media_type, _, parameters = content_type.partition(";")
    found = _CHARSET_RE.search(parameters) if parameters else None
    charset = found[1] if found else None
    if media_type.strip().lower() == "application/json":
        return payload_from_data(parse_json(body, charset), received_at)
    return payload_from_data(parse_form(body, charset), received_at)


# ------------------------------------------------------------------------ typed events


def payload_from_data(data: Mapping[str, Any], received_at: datetime) -> Payload:
    """Turn nested webhook data, delivered at `received_at`, into a `Payload` with one
    event per item."""
    account = _account(data.get("account"))
    if account.id is None:
        account = _account_of_items(data, account)
    day = delivery_day(received_at)
    events: list[Event] = []
    for group, content in data.items():
        if group == "account":
            continue
        events.extend(_group_events(group, content, account, day))
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
        id=stored_int(block.get("id"), "account[id]"),
        subdomain=subdomain if isinstance(subdomain, str) and subdomain else None,
        base_url=self_link if isinstance(self_link, str) and self_link else None,
    )


def _account_of_items(data: Mapping[str, Any], account: Account) -> Account:
    """The account of an older body, which names it only inside its items.

    2016–2018 bodies carry `account[subdomain]` alone at the top and `account_id` in
    every item. All items of one body come from one account: two that disagree are an
    error naming the second one's field.
    """
    first: tuple[str, int] | None = None
    for where, value in _item_account_ids(data):
        number = stored_int(value, where)
        if number is None:
            continue
        if first is None:
            first = (where, number)
        elif number != first[1]:
            raise PayloadError(
                f"field {where!r}: account {number} differs from {first[1]} in {first[0]}; "
                "one webhook comes from one account"
            )
    return account if first is None else replace(account, id=first[1], id_field=first[0])


def _item_account_ids(data: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(field, value) of every `account_id` an item of a known group carries."""
    for group, content in data.items():
        family = GROUP_FAMILIES.get(group)
        if family is None or not isinstance(content, Mapping):
            continue
        for action, items in content.items():
            if action in FAMILY_ACTIONS[family] and isinstance(items, list | Mapping):
                rows = enumerate(items) if isinstance(items, list) else items.items()
                for key, item in rows:
                    yield from _account_field(f"{group}[{action}][{key}]", item)


def _account_field(where: str, item: Any) -> Iterator[tuple[str, Any]]:
    """An item's `account_id`, or a note's (one level down), with its field name."""
    if not isinstance(item, Mapping):
        return
    if "account_id" in item:
        yield f"{where}[account_id]", item["account_id"]
    elif isinstance(item.get("note"), Mapping) and "account_id" in item["note"]:
        yield f"{where}[note][account_id]", item["note"]["account_id"]


def _group_events(group: str, content: Any, account: Account, day: str) -> list[Event]:
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
            event = _item_event(family, action, (label, index, key), item, (account, day))
            events.append(event)
            # An update that moved the stage is also a stage change (protocol §1.2):
            # `update_lead` alone then fires `status_changed` rules too, and when
            # `status_lead` delivers the same move, both carry the same change key.
            if action == "update" and is_stage_move(event.data):
                events.append(replace(event, type=f"{event.family}.status_changed"))
    return events


def _unknown(group: str, content: Any, account: Account) -> Event:
    return Event(type="unknown", group=group, index=0, data={"raw": content}, account=account)


def _item_event(
    family: str,
    action: str,
    where: tuple[str, int, Any],
    item: Any,
    delivery: tuple[Account, str],
) -> Event:
    """One item's event; `where` is its group label, index and key in the group,
    `delivery` the account and the `delivery_day` of the body."""
    label, index, key = where
    account, day = delivery
    bare = not isinstance(item, Mapping)  # a bare id, as some delete payloads send
    data = normalise({"id": item} if bare else item)
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
        raise PayloadError(f"field {field_path(path)!r}: {exc.problem}") from None
    return Event(
        type=f"{family}.{ACTION_VERBS[action]}",
        group=label,
        index=index,
        data=data,
        account=account,
        entities=entities,
        change=change_key(family, action, data, day),
    )
