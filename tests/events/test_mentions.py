"""Which entities a webhook names (`delivery_entities`, the webhook's log line)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlencode

from automation.events.mentions import describe_entities, named_entities
from automation.events.payloads import decode_body

AT = datetime(2026, 12, 6, tzinfo=UTC)


def test_a_chat_names_its_lead_and_the_contact_it_is_with(
    webhook_body: Callable[[str], bytes],
) -> None:
    payload = decode_body(webhook_body("add_talk"), received_at=AT)
    assert named_entities(payload) == [("lead", 27754620), ("chat_contact", 93589657)]


def test_a_stage_change_names_its_lead(webhook_body: Callable[[str], bytes]) -> None:
    assert named_entities(decode_body(webhook_body("status_lead"), received_at=AT)) == [
        ("lead", 27754599)
    ]


def test_a_lead_named_twice_in_one_body_is_named_once() -> None:
    fields = {
        "leads[update][0][id]": "5",
        "leads[update][0][status_id]": "1",
        "leads[status][0][id]": "5",
        "leads[status][0][status_id]": "1",
        "leads[status][1][id]": "6",
    }
    payload = decode_body(urlencode(fields).encode(), received_at=AT)
    assert named_entities(payload) == [("lead", 5), ("lead", 6)]


def test_a_chat_contact_beyond_64_bits_names_no_entity_instead_of_failing() -> None:
    fields = {
        "talk[add][0][talk_id]": "1",
        "talk[add][0][entity_type]": "contacts",
        "talk[add][0][entity_id]": "7",
        "talk[add][0][contact_id]": str(2**64),
    }
    payload = decode_body(urlencode(fields).encode(), received_at=AT)
    assert named_entities(payload) == [("contact", 7)]


def test_the_log_names_five_entities_and_counts_the_rest() -> None:
    pairs = [("lead", n) for n in range(1, 9)]
    assert describe_entities(pairs) == "lead:1,lead:2,lead:3,lead:4,lead:5 (+3 more)"
    assert describe_entities(pairs[:2]) == "lead:1,lead:2"
    assert describe_entities([]) == "-"
