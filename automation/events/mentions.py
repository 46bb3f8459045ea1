"""Which entities a webhook is about: every lead, contact, company, customer and chat
contact its events name, for `deliveries list --entity-id` and the webhook's log line.

A rule launches on one entity of an event (`Event.entities`); a person looking for
"the webhook about lead 27754599" searches by any of them, and for chats by the
contact the chat is with (`contact_id`), which `Event.entities` only keeps when the
chat is not already on a contact.

Pure: no I/O, no Flask, no database.
"""

from __future__ import annotations

from collections.abc import Iterable

from automation.events.payloads import Event, Payload
from automation.limits import MAX_ID

#: Event families whose `contact_id` is the contact the chat or message is with.
CHAT_FAMILIES = frozenset({"talk", "message", "outgoing_message"})
#: What `delivery_entities.entity_type` holds besides the salesbot entities.
CHAT_CONTACT = "chat_contact"


def named_entities(payload: Payload) -> list[tuple[str, int]]:
    """(entity type, id) pairs the payload's events name, each once, in body order."""
    return list(dict.fromkeys(pair for event in payload.events for pair in _of(event)))


def _of(event: Event) -> Iterable[tuple[str, int]]:
    pairs = list(event.entities.items())
    if event.family in CHAT_FAMILIES:
        contact = event.data.get("contact_id")
        if type(contact) is int and 0 < contact <= MAX_ID:
            pairs = [pair for pair in pairs if pair != ("contact", contact)]
            pairs.append((CHAT_CONTACT, contact))
    return pairs


def describe_entities(pairs: list[tuple[str, int]], shown: int = 5) -> str:
    """`lead:27754599,contact:3` and `+N` for the ones beyond `shown`, for a log line."""
    text = ",".join(f"{kind}:{entity_id}" for kind, entity_id in pairs[:shown]) or "-"
    hidden = len(pairs) - shown
    return f"{text} (+{hidden} more)" if hidden > 0 else text
