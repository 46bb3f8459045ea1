"""Webhook bodies → events: every fixture field by field, shapes, and error messages."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from automation.errors import PayloadError
from automation.events.form import MAX_FIELDS, parse_form
from automation.events.payloads import Account, Event, Payload, decode_body

ReadBody = Callable[[str], bytes]
#: When the bodies of these tests arrive.
AT = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
FORM = "application/x-www-form-urlencoded"

ACCOUNT = Account(id=30112233, subdomain="mybrand", base_url="https://mybrand.amocrm.ru")
ACCOUNT_PAIRS = [
    ("account[subdomain]", "mybrand"),
    ("account[id]", "30112233"),
    ("account[_links][self]", "https://mybrand.amocrm.ru"),
]
FIXTURES = (
    "status_lead",
    "add_lead",
    "update_lead",
    "responsible_lead",
    "add_talk",
    "add_message",
    "add_unsorted",
    "add_contact",
)
MESSAGE_ID = "a0ce13c7-4825-4ecc-9dc0-b35c49b86db4"
CHAT_ID = "54caee02-e383-46d8-a9b7-1fb43f07cffe"
AUTHOR_ID = "1db2f5cc-aea4-4f96-8d4f-a256ead5b7b0"
UNSORTED_UID = "00b625866db8641999f48766d61d4d0663c12aa38b9bcb4d2866b0c49605"


def form(*pairs: tuple[str, str], account: bool = True) -> bytes:
    """A form body as amoCRM sends it (brackets percent-encoded, spaces as `+`)."""
    return urlencode([*(ACCOUNT_PAIRS if account else []), *pairs]).encode()


def only_event(payload: Payload) -> Event:
    assert len(payload.events) == 1
    return payload.events[0]


def as_dense_maps(value: Any) -> Any:
    """The other decoder's view of the same body: lists printed as `{"0": …}` objects."""
    if isinstance(value, list):
        return {str(index): as_dense_maps(item) for index, item in enumerate(value)}
    if isinstance(value, dict):
        return {key: as_dense_maps(item) for key, item in value.items()}
    return value


def decode(body: bytes, content_type: str = FORM) -> Payload:
    """`decode_body` of a body delivered at `AT`."""
    return decode_body(body, content_type, received_at=AT)


def message_of(body: bytes, content_type: str = "application/x-www-form-urlencoded") -> str:
    with pytest.raises(PayloadError) as raised:
        decode(body, content_type)
    return str(raised.value)


# ------------------------------------------------------------------------ the fixtures


def test_status_lead_decodes_stage_change_with_old_status(webhook_body: ReadBody) -> None:
    payload = decode(webhook_body("status_lead"))
    event = only_event(payload)

    assert payload.recognized is True
    assert (event.type, event.family, event.group, event.index) == (
        "lead.status_changed",
        "lead",
        "leads[status]",
        0,
    )
    assert event.id == 27754599
    assert event.entities == {"lead": 27754599}
    assert event.change == "lead:27754599@1727700894:s59936202"
    assert event.data == {
        "id": 27754599,
        "name": "Заявка с сайта",
        "status_id": 59936202,
        "old_status_id": 59936198,
        "price": 15000,
        "responsible_user_id": 10004026,
        "last_modified": 1727700894,
        "modified_user_id": 10004026,
        "created_user_id": 0,
        "date_create": 1727690926,
        "pipeline_id": 7173574,
        "old_pipeline_id": 7173574,
        "tags": [{"id": 276241, "name": "site"}],
        "account_id": 30112233,
        "custom_fields": [
            {"id": 1425011, "name": "Город", "values": [{"value": "Москва"}]},
            {"id": 66339, "name": "Источник", "values": [{"value": "Сайт", "enum": 139517}]},
        ],
        "created_at": 1727690926,
        "updated_at": 1727700894,
    }


def test_status_lead_keeps_tags_and_custom_fields_as_lists(webhook_body: ReadBody) -> None:
    event = only_event(decode(webhook_body("status_lead")))

    assert event.data["tags"] == [{"id": 276241, "name": "site"}]
    assert [field["id"] for field in event.data["custom_fields"]] == [1425011, 66339]
    assert event.data["custom_fields"][1]["values"] == [{"value": "Сайт", "enum": 139517}]


def test_payload_data_keeps_the_strings_amocrm_sent(webhook_body: ReadBody) -> None:
    payload = decode(webhook_body("status_lead"))

    item = payload.data["leads"]["status"][0]
    assert item["id"] == "27754599"
    assert item["tags"] == [{"id": "276241", "name": "site"}]
    assert payload.data["account"] == {
        "subdomain": "mybrand",
        "id": "30112233",
        "_links": {"self": "https://mybrand.amocrm.ru"},
    }


def test_add_lead_decodes_new_lead_with_coded_custom_field(webhook_body: ReadBody) -> None:
    payload = decode(webhook_body("add_lead"))
    event = only_event(payload)

    assert (event.type, event.group, event.index) == ("lead.added", "leads[add]", 0)
    assert event.entities == {"lead": 27754611}
    assert event.change == "lead:27754611@1727701000:s59936194"
    assert event.data == {
        "id": 27754611,
        "name": "Заказ #87856",
        "status_id": 59936194,
        "price": 0,
        "responsible_user_id": 10004026,
        "last_modified": 1727701000,
        "modified_user_id": 0,
        "created_user_id": 0,
        "date_create": 1727701000,
        "pipeline_id": 7173574,
        "account_id": 30112233,
        "custom_fields": [
            {
                "id": 1402697,
                "name": "utm_source",
                "values": [{"value": "yandex"}],
                "code": "UTM_SOURCE",
            }
        ],
        "created_at": 1727701000,
        "updated_at": 1727701000,
    }


def test_update_lead_with_moved_stage_is_also_a_status_change(webhook_body: ReadBody) -> None:
    payload = decode(webhook_body("update_lead"))

    assert [(event.type, event.group, event.index) for event in payload.events] == [
        ("lead.updated", "leads[update]", 0),
        ("lead.status_changed", "leads[update]", 0),
    ]
    updated, moved = payload.events
    assert updated.data == moved.data
    assert updated.entities == moved.entities == {"lead": 27754599}
    assert updated.change == moved.change == "lead:27754599@1727700907:s59936206"
    assert updated.data == {
        "id": 27754599,
        "name": "Заявка с сайта",
        "status_id": 59936206,
        "old_status_id": 59936202,
        "price": 15000,
        "responsible_user_id": 10004026,
        "last_modified": 1727700907,
        "modified_user_id": 10004026,
        "created_user_id": 0,
        "date_create": 1727690926,
        "pipeline_id": 7173574,
        "account_id": 30112233,
        "created_at": 1727690926,
        "updated_at": 1727700907,
    }


def test_responsible_lead_carries_old_and_new_responsible(webhook_body: ReadBody) -> None:
    event = only_event(decode(webhook_body("responsible_lead")))

    assert (event.type, event.group, event.index) == (
        "lead.responsible_changed",
        "leads[responsible]",
        0,
    )
    assert event.entities == {"lead": 27754599}
    assert event.change == "lead:27754599@1727701200:s59936206"
    assert event.data == {
        "id": 27754599,
        "name": "Заявка с сайта",
        "status_id": 59936206,
        "price": 15000,
        "responsible_user_id": 10004031,
        "old_responsible_user_id": 10004026,
        "last_modified": 1727701200,
        "modified_user_id": 10004026,
        "created_user_id": 0,
        "date_create": 1727690926,
        "pipeline_id": 7173574,
        "account_id": 30112233,
        "created_at": 1727690926,
        "updated_at": 1727701200,
    }


def test_add_talk_converts_ids_and_flags_and_names_lead_and_contact(
    webhook_body: ReadBody,
) -> None:
    event = only_event(decode(webhook_body("add_talk")))

    assert (event.type, event.family, event.group, event.index) == (
        "talk.added",
        "talk",
        "talk[add]",
        0,
    )
    assert event.id == 106564
    assert event.entities == {"lead": 27754620, "contact": 93589657}
    assert event.change == "talk:106564:add"
    assert event.data == {
        "talk_id": 106564,
        "created_at": 1727702000,
        "updated_at": 1727702000,
        "rate": 0,
        "contact_id": 93589657,
        "chat_id": CHAT_ID,
        "entity_id": 27754620,
        "entity_type": "leads",
        "is_in_work": False,
        "is_read": False,
        "origin": "telegram",
    }


def test_add_message_keeps_uuid_ids_and_decodes_type_origin_author(
    webhook_body: ReadBody,
) -> None:
    event = only_event(decode(webhook_body("add_message")))

    assert (event.type, event.group, event.index) == ("message.added", "message[add]", 0)
    assert event.id == MESSAGE_ID
    assert event.entities == {"lead": 27754620, "contact": 93589657}
    assert event.change == f"message:{MESSAGE_ID}"
    assert (event.data["type"], event.data["origin"]) == ("incoming", "telegram")
    assert event.data["author"] == {
        "id": AUTHOR_ID,
        "type": "external",
        "name": "Олег",
        "avatar_url": (
            f"https://amojo.amocrm.ru/attachments/profiles/{AUTHOR_ID}/RKCPe-file-1_128x128.jpg"
        ),
    }
    assert {key: value for key, value in event.data.items() if key != "author"} == {
        "id": MESSAGE_ID,
        "chat_id": CHAT_ID,
        "talk_id": 106564,
        "contact_id": 93589657,
        "text": "Здравствуйте! Сколько стоит?",
        "created_at": 1727702001,
        "element_type": 2,
        "entity_type": "lead",
        "element_id": 27754620,
        "entity_id": 27754620,
        "type": "incoming",
        "origin": "telegram",
    }


def test_add_unsorted_names_created_lead_and_first_contact(webhook_body: ReadBody) -> None:
    event = only_event(decode(webhook_body("add_unsorted")))

    assert (event.type, event.group, event.index) == ("unsorted.added", "unsorted[add]", 0)
    assert event.id == UNSORTED_UID
    assert event.entities == {"lead": 27754620, "contact": 93589657}
    assert event.change == f"unsorted:{UNSORTED_UID}:add"
    assert event.data == {
        "uid": UNSORTED_UID,
        "source": "telegram:29e8f8c6-7557-5f5f-8642-2789ef3f3a13",
        "source_uid": f"amojo:telegram:{CHAT_ID}",
        "category": "chats",
        "source_data": {
            "from": "Олег",
            "name": "Олег",
            "to": "29e8f8c6-7557-5f5f-8642-2789ef3f3a13",
            "date": 1727702000,
            "service": "telegram",
            "site": "Telegram",
            "client": {"name": "Олег", "id": 1398715343},
            "origin": {"provider": "amojo", "chat_id": CHAT_ID},
            "data": [
                {
                    "id": "3175b0e9-852b-47f5-b501-61e6e681e014",
                    "manager": "0",
                    "date": 1727702000,
                    "text": "Здравствуйте!",
                }
            ],
            "source_name": "MyBrandBot",
        },
        "date_create": 1727702000,
        "data": {"contacts": [{"id": 93589657}]},
        "pipeline_id": 7173574,
        "account_id": 30112233,
        "source_id": 22594646,
        "lead_id": 27754620,
        "created_at": 1727702000,
    }


def test_add_contact_keeps_linked_leads_keyed_by_lead_id(webhook_body: ReadBody) -> None:
    event = only_event(decode(webhook_body("add_contact")))

    assert (event.type, event.group, event.index) == ("contact.added", "contacts[add]", 0)
    assert event.entities == {"contact": 93589657}
    assert event.change == "contact:93589657@1727702000:s"
    assert event.data["linked_leads_id"] == {"27754620": {"ID": 27754620}}
    assert event.data == {
        "id": 93589657,
        "name": "Олег Петров",
        "responsible_user_id": 10004026,
        "group_id": 0,
        "date_create": 1727702000,
        "last_modified": 1727702000,
        "created_user_id": 0,
        "modified_user_id": 0,
        "account_id": 30112233,
        "custom_fields": [
            {
                "id": 54667,
                "name": "Телефон",
                "values": [{"value": "+79031234567", "enum": 114611}],
                "code": "PHONE",
            }
        ],
        "linked_leads_id": {"27754620": {"ID": 27754620}},
        "created_at": 1727702000,
        "updated_at": 1727702000,
        "type": "contact",
    }


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_carries_the_account_block(webhook_body: ReadBody, name: str) -> None:
    payload = decode(webhook_body(name))

    assert payload.account == ACCOUNT
    assert payload.recognized is True
    assert [event.account for event in payload.events] == [ACCOUNT] * len(payload.events)


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("shape", ["lists", "dense maps"])
def test_json_body_of_the_same_shape_decodes_like_the_form(
    webhook_body: ReadBody, name: str, shape: str
) -> None:
    body = webhook_body(name)
    data = parse_form(body)
    document = data if shape == "lists" else as_dense_maps(data)
    json_body = json.dumps(document, ensure_ascii=False).encode()

    assert decode(json_body, "application/json; charset=utf-8") == decode(body)


#: Families without a real capture: built from amoCRM's documentation only (see
#: docs of `families`). Customers and tasks have no documented item fields beyond the
#: id and the `account_id` every item repeats; an outgoing message has message[add]'s
#: fields in their outgoing form; a note is wrapped one level deeper, as leads[note].
DOCUMENTED_ONLY = [
    ("add_customer", "customer.added", {"customer": 1800231}, "customer:1800231:add~2026-12-06"),
    ("add_task", "task.added", {}, "task:5400117:add~2026-12-06"),
    (
        "update_talk",
        "talk.updated",
        {"lead": 27754620, "contact": 93589657},
        "talk:106564:update@1727702300",
    ),
    (
        "add_outgoing_message",
        "outgoing_message.added",
        {"lead": 27754620, "contact": 93589657},
        "outgoing_message:6b1e0a52-31f7-4a3c-9f0e-2d7c5e8b9a10",
    ),
    (
        "update_unsorted",
        "unsorted.updated",
        {"lead": 27754620, "contact": 93589657},
        f"unsorted:{UNSORTED_UID}:update~2026-12-06",
    ),
    ("delete_unsorted", "unsorted.deleted", {"lead": 27754620}, f"unsorted:{UNSORTED_UID}:delete"),
    ("note_contact", "contact.note_added", {"contact": 93589657}, "contact:88002:note~2026-12-06"),
    ("note_company", "company.note_added", {"company": 71000001}, "company:88003:note~2026-12-06"),
]


@pytest.mark.parametrize(
    ("name", "event_type", "entities", "change"),
    DOCUMENTED_ONLY,
    ids=[case[0] for case in DOCUMENTED_ONLY],
)
def test_documented_family_without_a_real_sample_decodes(
    webhook_body: ReadBody, name: str, event_type: str, entities: dict[str, int], change: str
) -> None:
    payload = decode(webhook_body(name))

    event = only_event(payload)
    assert (event.type, dict(event.entities), event.change) == (event_type, entities, change)
    assert payload.account == ACCOUNT


# ---------------------------------------------------------------------- shapes of bodies


def test_same_stage_move_as_update_and_status_gives_the_same_change() -> None:
    move = [("id", "27754599"), ("status_id", "142"), ("old_status_id", "59936206")]
    move += [("pipeline_id", "7173574"), ("updated_at", "1727709999")]
    body = form(
        *((f"leads[update][0][{key}]", value) for key, value in move),
        *((f"leads[status][0][{key}]", value) for key, value in move),
    )

    events = decode(body).events

    assert [(event.type, event.group) for event in events] == [
        ("lead.updated", "leads[update]"),
        ("lead.status_changed", "leads[update]"),
        ("lead.status_changed", "leads[status]"),
    ]
    assert {event.change for event in events} == {"lead:27754599@1727709999:s142"}
    assert [event.entities for event in events] == [{"lead": 27754599}] * 3


def test_update_with_unchanged_stage_is_only_an_update() -> None:
    body = form(
        ("leads[update][0][id]", "5"),
        ("leads[update][0][status_id]", "142"),
        ("leads[update][0][old_status_id]", "142"),
    )

    assert [event.type for event in decode(body).events] == ["lead.updated"]


def test_update_without_old_status_is_only_an_update() -> None:
    body = form(("leads[update][0][id]", "5"), ("leads[update][0][status_id]", "142"))

    assert [event.type for event in decode(body).events] == ["lead.updated"]


def test_body_with_several_groups_and_hundreds_of_items_decodes_all_in_order() -> None:
    pairs: list[tuple[str, str]] = []
    expected: list[tuple[str, str, int, int]] = []
    for index in range(300):
        lead_id = 27000000 + index
        pairs += [
            (f"leads[status][{index}][id]", str(lead_id)),
            (f"leads[status][{index}][status_id]", "142"),
            (f"leads[status][{index}][tags][0][name]", f"tag {index}"),
        ]
        expected.append(("lead.status_changed", "leads[status]", index, lead_id))
    for index in range(150):
        contact_id = 93000000 + index
        pairs += [
            (f"contacts[update][{index}][id]", str(contact_id)),
            (f"contacts[update][{index}][type]", "contact"),
        ]
        expected.append(("contact.updated", "contacts[update]", index, contact_id))
    for index in range(120):
        pairs.append((f"talk[add][{index}][talk_id]", str(100000 + index)))
        expected.append(("talk.added", "talk[add]", index, 100000 + index))

    events = decode(form(*pairs)).events

    assert [(event.type, event.group, event.index, event.id) for event in events] == expected
    assert events[299].data["tags"] == [{"name": "tag 299"}]


def test_items_are_ordered_by_index_not_by_position_in_the_body() -> None:
    body = form(
        ("leads[add][10][id]", "11"),
        ("leads[add][2][id]", "3"),
        ("leads[add][0][id]", "1"),
        ("leads[add][1][id]", "2"),
        *((f"leads[add][{index}][id]", str(index + 1)) for index in range(3, 10)),
    )

    events = decode(body).events

    assert [event.id for event in events] == list(range(1, 12))
    assert [event.index for event in events] == list(range(11))


def test_contact_of_type_company_becomes_a_company_event() -> None:
    body = form(
        ("contacts[update][0][id]", "71000001"),
        ("contacts[update][0][type]", "company"),
        ("contacts[update][0][updated_at]", "1727703000"),
        ("contacts[update][1][id]", "93589657"),
        ("contacts[update][1][type]", "contact"),
    )

    company, contact = decode(body).events

    assert (company.type, company.group, company.index) == (
        "company.updated",
        "contacts[update]",
        0,
    )
    assert company.entities == {"company": 71000001}
    assert company.change == "company:71000001@1727703000:s"
    assert (contact.type, contact.entities) == ("contact.updated", {"contact": 93589657})


def test_companies_group_decodes_as_company_events() -> None:
    body = form(("companies[add][0][id]", "71000001"))

    event = only_event(decode(body))

    assert (event.type, event.entities) == ("company.added", {"company": 71000001})


def test_lead_note_is_unwrapped_and_names_the_lead_it_belongs_to() -> None:
    body = form(
        ("leads[note][0][note][id]", "88001"),
        ("leads[note][0][note][element_id]", "27754599"),
        ("leads[note][0][note][element_type]", "2"),
        ("leads[note][0][note][note_type]", "4"),
        ("leads[note][0][note][text]", "Перезвонить завтра"),
        ("leads[note][0][note][created_at]", "1727704000"),
    )

    event = only_event(decode(body))

    assert (event.type, event.group, event.index) == ("lead.note_added", "leads[note]", 0)
    assert event.data == {
        "id": 88001,
        "element_id": 27754599,
        "element_type": 2,
        "note_type": "4",
        "text": "Перезвонить завтра",
        "created_at": 1727704000,
    }
    assert event.id == 88001
    assert event.entities == {"lead": 27754599}


@pytest.mark.parametrize(
    "pairs",
    [
        [("leads[delete][0]", "123"), ("leads[delete][1]", "124")],
        [("leads[delete][0][id]", "123"), ("leads[delete][1][id]", "124")],
    ],
    ids=["bare ids", "id fields"],
)
def test_lead_delete_decodes_bare_ids_and_id_fields_alike(pairs: list[tuple[str, str]]) -> None:
    events = decode(form(*pairs)).events

    assert [(event.type, event.group, event.index) for event in events] == [
        ("lead.deleted", "leads[delete]", 0),
        ("lead.deleted", "leads[delete]", 1),
    ]
    assert [event.data for event in events] == [{"id": 123}, {"id": 124}]
    assert [event.entities for event in events] == [{"lead": 123}, {"lead": 124}]
    assert [event.change for event in events] == [
        "lead:123:delete~2026-12-06",
        "lead:124:delete~2026-12-06",
    ]


def test_unknown_group_becomes_an_unknown_event_with_raw_data() -> None:
    payload = decode(form(("catalogs[add][0][id]", "1")))

    assert payload.events == (
        Event(
            type="unknown",
            group="catalogs",
            index=0,
            data={"raw": {"add": [{"id": "1"}]}},
            account=ACCOUNT,
        ),
    )
    assert payload.recognized is False


def test_unknown_action_becomes_an_unknown_event_with_raw_data() -> None:
    payload = decode(form(("talk[delete][0][talk_id]", "106564")))

    event = only_event(payload)
    assert (event.type, event.group, event.index) == ("unknown", "talk[delete]", 0)
    assert event.data == {"raw": [{"talk_id": "106564"}]}
    assert (event.entities, event.change) == ({}, "")
    assert payload.recognized is False


def test_unknown_group_beside_a_known_one_keeps_the_payload_recognized() -> None:
    payload = decode(form(("catalogs[add][0][id]", "1"), ("leads[add][0][id]", "2")))

    assert [event.type for event in payload.events] == ["unknown", "lead.added"]
    assert payload.recognized is True


def test_account_block_alone_decodes_to_no_events() -> None:
    payload = decode(form())

    assert (payload.account, payload.events, payload.recognized) == (ACCOUNT, (), False)


def test_legacy_account_block_with_only_subdomain_decodes() -> None:
    payload = decode(form(("account[subdomain]", "old"), account=False))

    assert payload.account == Account(id=None, subdomain="old", base_url=None)


def test_value_that_is_not_a_number_is_kept_as_sent() -> None:
    body = form(
        ("leads[add][0][id]", "--5"),
        ("leads[add][0][updated_at]", "1" * 5000),
        ("leads[add][0][price]", "¹²"),
    )

    event = only_event(decode(body))

    assert event.data == {"id": "--5", "updated_at": "1" * 5000, "price": "¹²"}
    assert event.entities == {}


def test_index_made_of_non_ascii_digits_is_a_plain_key() -> None:
    event = only_event(decode(form(("catalogs[¹]", "x"))))

    assert (event.type, event.data) == ("unknown", {"raw": {"¹": "x"}})


def test_entity_type_that_is_not_a_code_names_no_entity() -> None:
    body = form(
        ("talk[add][0][talk_id]", "1"),
        ("talk[add][0][entity_type]", "¹"),
        ("talk[add][0][entity_id]", "27754620"),
        ("talk[add][0][contact_id]", "93589657"),
        ("task[add][0][id]", "2"),
        ("task[add][0][element_type]", "9" * 5000),
        ("task[add][0][element_id]", "27754620"),
    )

    talk, task = decode(body).events

    assert talk.entities == {"contact": 93589657}
    assert task.entities == {}


# ---------------------------------------------------------------------------- errors


def test_body_that_is_not_utf8_is_rejected() -> None:
    body = b"account[id]=1&x=\xff"

    assert message_of(body) == "field 'x': value is not UTF-8 (byte 16)"
    assert message_of(body, "application/json") == "body is not UTF-8 (byte 16)"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "account[id]=1&account[subdomain]=Мой".encode("cp1251"),
            "field 'account[subdomain]': value is not UTF-8 (byte 33)",
        ),
        (b"a=1&leads%5Badd%5D%5B0%5D%5Bname%5D=\xcc", "field 'leads[add][0][name]': value"),
        (b"a=1&le\xffads[add]=1", "body is not UTF-8 (byte 6)"),  # in a name: no name to show
        (b"a=1&le\xffads", "body is not UTF-8 (byte 6)"),
    ],
)
def test_byte_that_is_not_utf8_is_named_by_its_field(body: bytes, message: str) -> None:
    assert message_of(body).startswith(message)


def test_json_byte_that_is_not_utf8_is_named_by_its_field() -> None:
    body = '{"account": {"id": 1, "subdomain": "Мой"}}'.encode("cp1251")

    assert message_of(body, "application/json") == (
        "field 'account[subdomain]': value is not UTF-8 (byte 36)"
    )
    assert message_of(b'{"\xff": 1}', "application/json") == "body is not UTF-8 (byte 2)"


@pytest.mark.parametrize("content_type", [FORM, "application/json"])
def test_declared_charset_other_than_utf8_is_named_when_the_body_is_not_utf8(
    content_type: str,
) -> None:
    body = b"x=\xcc" if content_type == FORM else b'{"x": "\xcc"}'

    message = message_of(body, f'{content_type}; Charset="windows-1251"')

    assert message.startswith("field 'x': value is not UTF-8 (byte ")
    assert message.endswith("; only UTF-8 is supported, not charset=windows-1251")
    assert "charset" not in message_of(body, f"{content_type}; charset=utf-8")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xef\xbb\xbf" + form(), FORM),
        (
            b'\xef\xbb\xbf{"account": {"id": "30112233", "subdomain": "mybrand"}}',
            "application/json",
        ),
    ],
)
def test_leading_byte_order_mark_is_no_part_of_the_body(body: bytes, content_type: str) -> None:
    payload = decode(body, content_type)

    assert (payload.account.id, payload.account.subdomain) == (30112233, "mybrand")
    assert payload.events == ()
    assert list(payload.data) == ["account"]


def test_byte_order_mark_is_counted_in_the_offset_of_a_bad_byte() -> None:
    assert message_of(b"\xef\xbb\xbfx=\xff") == "field 'x': value is not UTF-8 (byte 5)"
    assert message_of(b"\xef\xbb\xbf\xff=1") == "body is not UTF-8 (byte 3)"


def test_body_of_only_separators_has_no_fields_rather_than_too_many() -> None:
    assert message_of(b"&" * (MAX_FIELDS + 1)) == (
        "not an amoCRM webhook: no 'account' block and no event group"
    )


def test_body_with_too_many_fields_says_how_many() -> None:
    body = b"&&".join([b"a"] * (MAX_FIELDS + 1))

    assert message_of(body) == (
        f"body has {MAX_FIELDS + 1} form fields; at most {MAX_FIELDS} are accepted"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"leads[add=1", "field 'leads[add': malformed bracket key"),
        (b"leads%5Badd%5D%5B0=1", "field 'leads[add][0': malformed bracket key"),
        (b"leads[add]x=1", "field 'leads[add]x': malformed bracket key"),
        (b"[add][0]=1", "field '[add][0]': malformed bracket key"),
    ],
)
def test_malformed_bracket_key_is_rejected(body: bytes, message: str) -> None:
    assert message_of(body) == message


def test_key_that_is_both_value_and_group_is_rejected() -> None:
    assert message_of(b"a=1&a[b]=2") == "field 'a[b]': 'a' is both a value and a group"
    assert message_of(b"a[b]=2&a=1") == "field 'a': 'a' is both a value and a group"
    assert (
        message_of(b"leads[add][0][id]=1&leads[add][0][id][x]=2")
        == "field 'leads[add][0][id][x]': 'leads[add][0][id]' is both a value and a group"
    )


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"[1, 2]", "list"), (b'"leads"', "str"), (b"42", "int"), (b"null", "NoneType")],
)
def test_json_body_that_is_not_an_object_is_rejected(body: bytes, kind: str) -> None:
    assert message_of(body, "application/json") == f"JSON body must be an object, got {kind}"


def test_body_that_is_not_json_is_rejected() -> None:
    assert (
        message_of(b"leads[add][0][id]=1", "application/json")
        == "body is not valid JSON: Expecting value: line 1 column 1 (char 0)"
    )


def test_json_nested_deeper_than_any_webhook_is_rejected() -> None:
    body = b'{"leads": {"add": [{"x": ' + b"[" * 600 + b"]" * 600 + b"}]}}"

    assert message_of(body, "application/json") == "JSON body nested deeper than 32 levels"


def test_form_key_nested_deeper_than_any_webhook_is_rejected() -> None:
    key = "a" + "[x]" * 32

    assert message_of(key.encode() + b"=1") == f"field {key!r}: nested deeper than 32 levels"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"", "application/x-www-form-urlencoded"), (b"{}", "application/json")],
)
def test_body_without_account_or_event_group_is_rejected(body: bytes, content_type: str) -> None:
    assert (
        message_of(body, content_type)
        == "not an amoCRM webhook: no 'account' block and no event group"
    )


def test_account_that_is_not_a_group_is_rejected() -> None:
    assert message_of(b"account=mybrand") == (
        "field 'account' must be a group such as account[id]=…"
    )


@pytest.mark.parametrize("account_id", ["abc", "--1", "1.0", "-", "¹"])
def test_account_id_that_is_not_a_number_is_rejected(account_id: str) -> None:
    assert message_of(form(("account[id]", account_id), account=False)) == (
        f"field 'account[id]': expected a number, got {account_id!r}"
    )


@pytest.mark.parametrize("account_id", ["true", "false"])
def test_json_boolean_account_id_is_not_a_number(account_id: str) -> None:
    body = f'{{"account": {{"id": {account_id}}}}}'.encode()

    assert message_of(body, "application/json") == (
        f"field 'account[id]': expected a number, got {account_id.title()}"
    )


# ------------------------------------------------------- what could not be stored


@pytest.mark.parametrize(
    ("pairs", "field", "number"),
    [
        ([("leads[status][0][id]", str(2**63))], "leads[status][0][id]", str(2**63)),
        ([("leads[delete][0]", "9" * 23)], "leads[delete][0]", "9" * 23),
        ([("leads[delete][27754620][id]", "9" * 23)], "leads[delete][27754620][id]", "9" * 23),
        (
            [("talk[add][0][entity_type]", "lead"), ("talk[add][0][entity_id]", "9" * 23)],
            "talk[add][0][entity_id]",
            "9" * 23,
        ),
        ([("message[add][0][contact_id]", "9" * 23)], "message[add][0][contact_id]", "9" * 23),
        (
            [("task[add][0][element_type]", "2"), ("task[add][0][element_id]", "9" * 23)],
            "task[add][0][element_id]",
            "9" * 23,
        ),
        (
            [("leads[note][0][note][id]", "1"), ("leads[note][0][note][element_id]", "9" * 23)],
            "leads[note][0][note][element_id]",
            "9" * 23,
        ),
        (
            [("unsorted[add][0][uid]", "u"), ("unsorted[add][0][data][leads][0][id]", "9" * 23)],
            "unsorted[add][0][data][leads][0][id]",
            "9" * 23,
        ),
        (
            [("leads[add][0][id]", "1" * 5000)],
            "leads[add][0][id]",
            "111111111111…1111 (5000 characters)",
        ),
    ],
)
def test_entity_id_beyond_64_bits_is_rejected_naming_the_field(
    pairs: list[tuple[str, str]], field: str, number: str
) -> None:
    assert message_of(form(*pairs)) == f"field {field!r}: {number} is out of range"


@pytest.mark.parametrize(
    ("account_id", "number"),
    [
        ("99999999999999999999999", "99999999999999999999999"),
        (str(-(2**63) - 1), str(-(2**63) - 1)),
        ("1" * 5000, "111111111111…1111 (5000 characters)"),
    ],
)
def test_account_id_beyond_64_bits_is_rejected(account_id: str, number: str) -> None:
    assert message_of(form(("account[id]", account_id), account=False)) == (
        f"field 'account[id]': {number} is out of range"
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"account": {"id": 1}, "message": {"add": [{"id": "m", "contact_id": 10**23}]}},
            "field 'message[add][0][contact_id]': 100000000000000000000000 is out of range",
        ),
        ({"account": {"id": 2**63}}, f"field 'account[id]': {2**63} is out of range"),
        # Not an id, and still refused: a JSON integer beyond 64 bits is nothing amoCRM sends.
        (
            {"account": {"id": 1}, "x": [{"y": -(2**63) - 1}]},
            f"field 'x[0][y]': {-(2**63) - 1} is out of range",
        ),
        (
            {"account": {"id": 1}, "leads": {"status": [{"id": True}]}},
            "field 'leads[status][0][id]': expected an id, got True",
        ),
    ],
)
def test_json_number_that_could_not_be_stored_is_rejected(
    document: dict[str, Any], message: str
) -> None:
    assert message_of(json.dumps(document).encode(), "application/json") == message


def test_largest_64_bit_ids_are_accepted() -> None:
    body = form(("leads[add][0][id]", str(2**63 - 1)), ("leads[add][0][updated_at]", "1"))
    body = body.replace(b"30112233", str(2**63 - 1).encode())

    payload = decode(body)

    assert payload.account.id == 2**63 - 1
    assert only_event(payload).entities == {"lead": 2**63 - 1}


def test_number_beyond_64_bits_that_is_never_stored_is_kept_as_text() -> None:
    body = form(
        ("leads[add][0][id]", "5"),
        ("leads[add][0][price]", str(2**63)),
        ("leads[add][0][status_id]", "9" * 23),
    )

    event = only_event(decode(body))

    assert event.data == {"id": 5, "price": str(2**63), "status_id": "9" * 23}
    assert event.entities == {"lead": 5}


@pytest.mark.parametrize("lead_id", ["0", "-1", str(-(2**63))])
def test_entity_id_of_zero_or_below_names_no_entity(lead_id: str) -> None:
    event = only_event(decode(form(("leads[add][0][id]", lead_id))))

    assert event.entities == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b"account[id]=1&account[subdomain]=a%00b",
            "field 'account[subdomain]': NUL character in the value",
        ),
        (
            b"account[id]=1&leads[status][0][id]=5&leads[status][0][updated_at]=1%00",
            "field 'leads[status][0][updated_at]': NUL character in the value",
        ),
        (b"account[id]=1&x=\x00", "field 'x': NUL character in the value"),
        (
            b"account[id]=1&leads[st%00atus][0][id]=5",
            "field 'leads[st\\x00atus][0][id]': NUL character in the name",
        ),
        (b"account[id]=1&leads\x00=5", "field 'leads\\x00': NUL character in the name"),
        (b"account%5Bid%5D=1&a%5B%00%5D=1", "field 'a[\\x00]': NUL character in the name"),
    ],
)
def test_nul_character_in_a_form_is_rejected_naming_the_field(body: bytes, message: str) -> None:
    assert message_of(body) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"account": {"id": 1, "subdomain": "a\\u0000b"}}',
            "field 'account[subdomain]': NUL character in the value",
        ),
        (
            b'{"account": {"id": 1}, "leads": {"add": [{"na\\u0000me": 1}]}}',
            "field 'leads[add][0][na\\x00me]': NUL character in the name",
        ),
    ],
)
def test_nul_character_in_json_is_rejected_naming_the_field(body: bytes, message: str) -> None:
    assert message_of(body, "application/json") == message


def test_subdomain_longer_than_its_column_is_rejected() -> None:
    assert decode(form(("account[subdomain]", "a" * 100), account=False)).account == (
        Account(subdomain="a" * 100)
    )
    assert message_of(form(("account[subdomain]", "a" * 101), account=False)) == (
        "field 'account[subdomain]': 101 characters, longer than the 100 a subdomain may have"
    )


# ------------------------------------------------------------ the account of old bodies


def older_body(*account_ids: str) -> bytes:
    """A 2016–2018 body: `account[subdomain]` alone at the top, the id in each item."""
    pairs = [("account[subdomain]", "mybrand")]
    for index, account_id in enumerate(account_ids):
        pairs += [(f"leads[add][{index}][id]", str(100 + index))]
        pairs += [(f"leads[add][{index}][account_id]", account_id)]
    return urlencode(pairs).encode()


def test_account_id_is_taken_from_the_items_when_the_top_has_none() -> None:
    account = decode(older_body("30112233", "30112233")).account

    assert (account.id, account.subdomain) == (30112233, "mybrand")
    assert account.id_field == "leads[add][0][account_id]"


def test_account_id_at_the_top_wins_over_the_items() -> None:
    body = form(("leads[add][0][id]", "1"), ("leads[add][0][account_id]", "999"))

    assert decode(body).account == ACCOUNT


def test_items_of_two_accounts_are_rejected_naming_the_field() -> None:
    assert message_of(older_body("30112233", "30112233", "999")) == (
        "field 'leads[add][2][account_id]': account 999 differs from 30112233 in "
        "leads[add][0][account_id]; one webhook comes from one account"
    )


def test_account_id_of_a_note_is_read_inside_the_note() -> None:
    body = b"account[subdomain]=mybrand&leads[note][0][note][element_id]=5"
    body += b"&leads[note][0][note][account_id]=7"

    account = decode(body).account

    assert (account.id, account.id_field) == (7, "leads[note][0][note][account_id]")


def test_item_account_id_that_is_not_a_number_is_rejected_naming_the_field() -> None:
    assert message_of(older_body("abc")) == (
        "field 'leads[add][0][account_id]': expected a number, got 'abc'"
    )
