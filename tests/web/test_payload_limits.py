"""Bodies no backend could store get a 400 naming the field, on SQLite and PostgreSQL.

Before these limits, the same body gave a 500 on SQLite (OverflowError) and a 503 on
PostgreSQL (DataError), which amoCRM retries forever; or was stored on SQLite and
refused on PostgreSQL. Each test posts through Flask's test client and checks the
answer and that nothing was stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from automation.store.models import Delivery, Launch

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
#: A stage move that TEST_RULES' `qualified` rule launches a bot on.
MOVE = b"account[id]=1&leads[status][0][status_id]=59936202&leads[status][0][id]="
LEAD = {"id": 27754599, "status_id": 59936202}


def post(client: Any, body: bytes, content_type: str = FORM) -> Any:
    return client.post("/webhooks/amocrm/s3cret", data=body, content_type=content_type)


def stored(app: Any) -> tuple[int, int]:
    """How many deliveries and launches the database holds."""
    with app.extensions["automation"].sessions() as session:
        deliveries = session.scalar(select(func.count()).select_from(Delivery))
        launches = session.scalar(select(func.count()).select_from(Launch))
    return deliveries, launches


def assert_refused(app: Any, answer: Any, message: str) -> None:
    assert answer.status_code == 400
    assert answer.json == {"error": message}
    assert stored(app) == (0, 0)


# ------------------------------------------------------------- D3: beyond 64 bits


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (
            b"account[id]=99999999999999999999999",
            FORM,
            "field 'account[id]': 99999999999999999999999 is out of range",
        ),
        (
            MOVE + b"9223372036854775808",
            FORM,
            "field 'leads[status][0][id]': 9223372036854775808 is out of range",
        ),
        (
            json.dumps(
                {
                    "account": {"id": 1},
                    "message": {"add": [{"id": "m", "contact_id": 10**23, "type": "incoming"}]},
                }
            ).encode(),
            JSON,
            "field 'message[add][0][contact_id]': 100000000000000000000000 is out of range",
        ),
    ],
)
def test_id_beyond_64_bits_gets_400_naming_the_field(
    app: Any, client: Any, body: bytes, content_type: str, message: str
) -> None:
    assert_refused(app, post(client, body, content_type), message)


def test_largest_64_bit_ids_are_stored_with_their_launch(app: Any, client: Any) -> None:
    largest = str(2**63 - 1).encode()
    body = MOVE.replace(b"account[id]=1", b"account[id]=" + largest) + largest

    answer = post(client, body)

    assert answer.status_code == 200
    assert answer.json["launches"] == 1
    with app.extensions["automation"].sessions() as session:
        assert session.scalar(select(Delivery.account_id)) == 2**63 - 1
        assert session.scalar(select(Launch.entity_id)) == 2**63 - 1


# ---------------------------------------------- D4: what PostgreSQL text cannot hold


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b"account[id]=1&account[subdomain]=" + b"a" * 101,
            "field 'account[subdomain]': 101 characters, longer than the 100 a subdomain may have",
        ),
        (
            b"account[id]=1&account[subdomain]=a%00b",
            "field 'account[subdomain]': NUL character in the value",
        ),
        (
            MOVE + b"27754599&leads[status][0][updated_at]=1%00",
            "field 'leads[status][0][updated_at]': NUL character in the value",
        ),
        (
            MOVE + b"27754599&leads[status][0][na%00me]=x",
            "field 'leads[status][0][na\\x00me]': NUL character in the name",
        ),
    ],
)
def test_value_postgresql_cannot_store_gets_400_naming_the_field(
    app: Any, client: Any, body: bytes, message: str
) -> None:
    assert_refused(app, post(client, body), message)


def test_subdomain_of_100_characters_is_stored(app: Any, client: Any) -> None:
    answer = post(client, b"account[id]=1&account[subdomain]=" + b"a" * 100)

    assert answer.status_code == 200
    with app.extensions["automation"].sessions() as session:
        assert session.scalar(select(Delivery.account_subdomain)) == "a" * 100


# --------------------------------------------------------- D8: a boolean is no id


def test_boolean_account_id_does_not_pass_as_account_1(
    make_settings: Callable[..., Any], make_app: Callable[[Any], Any]
) -> None:
    app = make_app(make_settings(amocrm_account_id=1))

    answer = post(app.test_client(), b'{"account": {"id": true}}', JSON)

    assert_refused(app, answer, "field 'account[id]': expected a number, got True")


# --------------------------------------------------- D9: a leading byte order mark


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xef\xbb\xbf" + MOVE + b"27754599", FORM),
        (
            b"\xef\xbb\xbf"
            + json.dumps({"account": {"id": 1}, "leads": {"status": [LEAD]}}).encode(),
            JSON,
        ),
    ],
)
def test_body_with_a_byte_order_mark_is_stored_as_sent_and_decoded_without_it(
    make_settings: Callable[..., Any],
    make_app: Callable[[Any], Any],
    body: bytes,
    content_type: str,
) -> None:
    app = make_app(make_settings(amocrm_account_id=1))

    answer = post(app.test_client(), body, content_type)

    assert answer.status_code == 200
    assert answer.json["launches"] == 1
    with app.extensions["automation"].sessions() as session:
        delivery = session.scalars(select(Delivery)).one()
    assert (delivery.account_id, delivery.body) == (1, body)


# ------------------------------------------------ D10: errors that say where and what


def test_byte_that_is_not_utf8_is_named_by_its_field(app: Any, client: Any) -> None:
    body = "account[id]=1&account[subdomain]=Мой".encode("cp1251")

    answer = post(client, body, f"{FORM}; charset=windows-1251")

    assert answer.status_code == 400
    # With the full content type passed to `decode_body` (see its docstring), the message
    # also ends "; only UTF-8 is supported, not charset=windows-1251".
    assert answer.json["error"].startswith(
        "field 'account[subdomain]': value is not UTF-8 (byte 33)"
    )
    assert stored(app) == (0, 0)


def test_body_of_only_separators_is_no_webhook_rather_than_too_many_fields(
    app: Any, client: Any
) -> None:
    answer = post(client, b"&" * 200_001)

    assert_refused(app, answer, "not an amoCRM webhook: no 'account' block and no event group")


def test_a_declared_charset_other_than_utf8_is_named_in_the_400(client: Any) -> None:
    answer = client.post(
        "/webhooks/amocrm/s3cret",
        data=b"account[id]=1&account[subdomain]=\xcc\xee\xe9",
        content_type="application/x-www-form-urlencoded; charset=windows-1251",
    )
    assert answer.status_code == 400
    assert answer.json["error"].endswith("; only UTF-8 is supported, not charset=windows-1251")
    assert "field 'account[subdomain]'" in answer.json["error"]
