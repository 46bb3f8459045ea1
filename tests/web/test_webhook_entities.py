"""A webhook stores the entities its events name, with the delivery, and logs them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import select

from automation.store.models import DeliveryEntity

FORM = "application/x-www-form-urlencoded"


def stored_entities(app: Any) -> list[tuple[int, str, int]]:
    with app.extensions["automation"].sessions() as session:
        rows = session.execute(
            select(DeliveryEntity.delivery_id, DeliveryEntity.entity_type, DeliveryEntity.entity_id)
        )
        return sorted(tuple(row) for row in rows)


def test_a_chat_webhook_stores_its_lead_and_chat_contact_with_the_delivery(
    app: Any, client: Any, webhook_body: Callable[[str], bytes]
) -> None:
    answer = client.post(
        "/webhooks/amocrm/s3cret", data=webhook_body("add_talk"), content_type=FORM
    )
    delivery = answer.json["delivery_id"]
    assert stored_entities(app) == [
        (delivery, "chat_contact", 93589657),
        (delivery, "lead", 27754620),
    ]


def test_a_bulk_webhook_stores_one_row_per_lead_and_logs_five_of_them(
    app: Any, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fields = {f"leads[status][{i}][id]": str(1000 + i) for i in range(8)}
    with caplog.at_level(logging.INFO, logger="automation.webhooks"):
        answer = client.post("/webhooks/amocrm/s3cret", data=urlencode(fields), content_type=FORM)

    assert answer.status_code == 200
    assert [row[2] for row in stored_entities(app)] == list(range(1000, 1008))
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("webhook ")]
    assert "entities=lead:1000,lead:1001,lead:1002,lead:1003,lead:1004 (+3 more)" in line
