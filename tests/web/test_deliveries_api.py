"""`GET /api/deliveries` and `GET /api/deliveries/<id>/explain` behind ADMIN_TOKEN."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest

from automation.config import Settings
from automation.store.explain import DeliveryExplanation

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def api_app(make_app: Callable[[Settings], Any], make_settings: Callable[..., Settings]) -> Any:
    return make_app(make_settings(admin_token=TOKEN))


def lead_change(status: int, lead: int = 27754599) -> str:
    return urlencode(
        {
            "leads[status][0][id]": lead,
            "leads[status][0][status_id]": status,
            "leads[status][0][last_modified]": status,
        }
    )


def test_deliveries_of_a_lead_page_newest_first_with_a_cursor(api_app: Any) -> None:
    client = api_app.test_client()
    posted = [
        client.post("/webhooks/amocrm/s3cret", data=lead_change(status, lead), content_type=FORM)
        for status, lead in [(1, 27754599), (2, 5), (3, 27754599), (4, 27754599)]
    ]
    ids = [answer.json["delivery_id"] for answer in posted]

    first = client.get("/api/deliveries?entity_id=27754599&limit=2", headers=AUTH).json
    rest = client.get(
        f"/api/deliveries?entity_id=27754599&limit=2&cursor={first['next_cursor']}", headers=AUTH
    ).json

    assert [row["id"] for row in first["deliveries"]] == [ids[3], ids[2]]
    assert [row["id"] for row in rest["deliveries"]] == [ids[0]]
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("entity=1", "entity: unknown parameter; expected one of entity_id, status, since"),
        (
            "status=sent",
            "status: expected one of accepted, unrecognized, queued, rejected, got 'sent'",
        ),
        ("entity_id=0", "entity_id: expected a positive integer, got '0'"),
        ("since=yesterday", "since: expected a time with its offset"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(api_app: Any, query: str, message: str) -> None:
    answer = api_app.test_client().get(f"/api/deliveries?{query}", headers=AUTH)
    assert answer.status_code == 400
    assert answer.json["error"].startswith(message)


def test_explain_answers_the_explanation_model_and_needs_the_token(api_app: Any) -> None:
    client = api_app.test_client()
    delivery = client.post("/webhooks/amocrm/s3cret", data=lead_change(1), content_type=FORM).json[
        "delivery_id"
    ]

    answer = client.get(f"/api/deliveries/{delivery}/explain", headers=AUTH)
    refused = client.get(f"/api/deliveries/{delivery}/explain")

    explanation = DeliveryExplanation.model_validate(answer.json)
    [event] = explanation.events
    [verdict] = event.rules
    assert (verdict.rule, verdict.verdict.value, verdict.matched) == (
        "qualified",
        "conditions_failed",
        False,
    )
    assert explanation.rules.version_id is not None and explanation.launches == []
    assert refused.status_code == 401


def many_changes(count: int) -> str:
    """`count` stage changes of as many leads, none of them the stage a rule wants."""
    fields = {}
    for i in range(count):
        fields |= {
            f"leads[status][{i}][id]": 27_000_000 + i,
            f"leads[status][{i}][status_id]": 1,
            f"leads[status][{i}][last_modified]": 1,
        }
    return urlencode(fields)


def test_explain_shows_a_window_of_events_and_counts_them_all(api_app: Any) -> None:
    client = api_app.test_client()
    delivery = client.post(
        "/webhooks/amocrm/s3cret", data=many_changes(120), content_type=FORM
    ).json["delivery_id"]

    first = DeliveryExplanation.model_validate(
        client.get(f"/api/deliveries/{delivery}/explain", headers=AUTH).json
    )
    last = DeliveryExplanation.model_validate(
        client.get(f"/api/deliveries/{delivery}/explain?offset=100&limit=50", headers=AUTH).json
    )

    assert [e.index for e in first.events] == list(range(50))
    assert (first.offset, first.limit, first.event_count) == (0, 50, 120)
    assert [(c.verdict.value, c.count) for c in first.verdicts] == [("conditions_failed", 120)]
    assert [e.index for e in last.events] == list(range(100, 120))
    # The delivery's entities: the first 20 listed, the others counted.
    assert len(first.delivery.entities) == 20 and first.delivery.more_entities == 100
    listed = client.get("/api/deliveries?limit=1", headers=AUTH).json["deliveries"][0]
    assert len(listed["entities"]) == 20 and listed["more_entities"] == 100


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit: expected an integer from 1 to 500, got '0'"),
        ("offset=-1", "offset: expected an integer from 0 to 999999999, got '-1'"),
        ("page=2", "page: unknown parameter; expected one of offset, limit"),
    ],
)
def test_a_bad_explain_window_is_a_400_naming_it(api_app: Any, query: str, message: str) -> None:
    client = api_app.test_client()
    delivery = client.post("/webhooks/amocrm/s3cret", data=lead_change(1), content_type=FORM).json[
        "delivery_id"
    ]
    answer = client.get(f"/api/deliveries/{delivery}/explain?{query}", headers=AUTH)
    assert answer.status_code == 400
    assert answer.json["error"].startswith(message)
