"""The fields each event type is known to carry, as amoCRM documents and sends them.

`rules check` compares the fields a rule's conditions name with these, so that
`tag: vip` (for `tags`) or `status: 142` (for `status_id`) is caught instead of never
matching. The lists are what the protocol reference shows on the wire (§1.3); amoCRM
adds fields over time, so a field missing here is not necessarily wrong, and a family
whose fields are not documented (customers, tasks, outgoing messages, notes) has no
list at all (`known_fields` gives None). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from automation.events.families import EVENT_TYPES

#: Fields whose value is a mapping with documented keys: `author.type`.
NESTED: Mapping[str, frozenset[str]] = {
    "author": frozenset({"id", "type", "name", "avatar_url"}),
    "attachment": frozenset({"type", "link", "file_name"}),
}

_CRM = frozenset(
    {
        *("id", "name", "responsible_user_id", "old_responsible_user_id", "account_id"),
        *("created_user_id", "modified_user_id", "date_create", "last_modified"),
        *("created_at", "updated_at", "tags", "custom_fields"),
    }
)
_LEAD = _CRM | {"status_id", "old_status_id", "pipeline_id", "old_pipeline_id", "price"}
_CONTACT = _CRM | {"group_id", "company_name", "linked_company_id", "linked_leads_id", "type"}
_MESSAGE = frozenset(
    {
        *("id", "chat_id", "talk_id", "contact_id", "text", "created_at", "type", "origin"),
        *("element_type", "element_id", "entity_type", "entity_id", "author", "attachment"),
    }
)
_TALK = frozenset(
    {
        *("talk_id", "chat_id", "contact_id", "entity_id", "entity_type", "origin"),
        *("is_read", "is_in_work", "created_at", "updated_at", "rate"),
    }
)
_UNSORTED = frozenset(
    {
        *("uid", "source", "source_uid", "category", "source_data", "date_create", "data"),
        *("pipeline_id", "account_id", "source_id", "lead_id", "created_at"),
        *("action", "accept_result"),
    }
)
#: Family → its fields; families not named here have no documented field list.
FAMILY_FIELDS: Mapping[str, frozenset[str]] = {
    "lead": _LEAD,
    "contact": _CONTACT,
    "company": _CONTACT,
    "message": _MESSAGE,
    "talk": _TALK,
    "unsorted": _UNSORTED,
}


def known_fields(event_type: str) -> frozenset[str] | None:
    """Top-level fields `event_type` carries, or None when they are not documented.

    A note event carries the note's fields, which amoCRM does not document.
    """
    if event_type not in EVENT_TYPES or event_type.endswith(".note_added"):
        return None
    return FAMILY_FIELDS.get(event_type.split(".", 1)[0])
