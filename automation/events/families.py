"""What amoCRM can send: payload groups, their actions, and the event types they make.

One table per question, read by the decoder (`payloads`), the rules (`on:` names,
which entity an event carries) and the JSON Schema. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

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
