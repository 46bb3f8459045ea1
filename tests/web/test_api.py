"""The read API (`/api/launches`, `/api/deliveries`) through Flask's test client,
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from automation.config import Settings
from automation.store.models import ApiCall, CallLaunch, Delivery, Launch
from automation.store.states import LaunchStatus
from tests.launches import add_launches, delivery_values, launch_values

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FORM = "application/x-www-form-urlencoded"
T0 = datetime(2024, 10, 1, 9, 0, tzinfo=UTC)
STATUSES = "pending, sending, sent, failed, uncertain, dry_run, cancelled, skipped"
MOMENT = (
    "expected a time with its offset such as 2024-10-01T09:00:00+03:00, a date such as "
    "2024-10-01 or a duration ago such as 30m, 2h or 3d"
)


@pytest.fixture
def api_app(make_settings: Callable[..., Settings], make_app: Callable[[Settings], Any]) -> Any:
    return make_app(make_settings(admin_token=TOKEN))


@pytest.fixture
def sessions(api_app: Any) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = api_app.extensions["automation"].sessions
    return factory


@pytest.fixture
def get(api_app: Any) -> Callable[..., Any]:
    """GET with the admin token: `get("/api/launches", status=["sent"], limit=2)`."""
    client = api_app.test_client()

    def request(path: str, **params: Any) -> Any:
        return client.get(path, query_string=params, headers=AUTH)

    return request


@pytest.fixture
def make_launch(sessions: sessionmaker[Session]) -> Callable[..., int]:
    """Insert one launch, T0 unless told otherwise; returns its id."""

    def build(**overrides: Any) -> int:
        values = launch_values(T0, **overrides)
        with sessions.begin() as session:
            launch_id: int = session.execute(
                insert(Launch).returning(Launch.id), values
            ).scalar_one()
        return launch_id

    return build


def add_delivery(sessions: sessionmaker[Session], body: bytes) -> int:
    row = delivery_values(
        T0,
        remote_addr="127.0.0.1",
        body=body,
        account_id=30112233,
        account_subdomain="mybrand",
        event_count=1,
    )
    with sessions.begin() as session:
        delivery_id: int = session.execute(
            insert(Delivery).returning(Delivery.id), row
        ).scalar_one()
    return delivery_id


def add_call(sessions: sessionmaker[Session], launch_id: int, position: int, **values: Any) -> int:
    """Record an API call that carried `launch_id` at `position`."""
    row = {
        "dispatcher": "host:1",
        "endpoint": "/api/v2/salesbot/run",
        "launch_count": 4,
        "started_at": T0,
        "finished_at": T0 + timedelta(seconds=1),
        "status_code": 400,
        "outcome": "bad_item",
        "error": None,
        "response_excerpt": None,
        **values,
    }
    with sessions.begin() as session:
        call_id: int = session.execute(insert(ApiCall).returning(ApiCall.id), row).scalar_one()
        session.execute(
            insert(CallLaunch), {"call_id": call_id, "launch_id": launch_id, "position": position}
        )
    return call_id


def ids(answer: Any) -> list[int]:
    return [launch["id"] for launch in answer.json["launches"]]


# --------------------------------------------------------------------------- access


@pytest.mark.parametrize(
    "path", ["/api/launches", "/api/launches/1", "/api/deliveries/1", "/api/launches?status=x"]
)
def test_read_api_does_not_exist_without_admin_token(client: Any, path: str) -> None:
    answer = client.get(path, headers=AUTH)
    unknown = client.get("/api/nothing-here")

    assert answer.status_code == 404
    assert answer.json == unknown.json
    assert "WWW-Authenticate" not in answer.headers


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer tökén",
    ],
)
def test_missing_or_wrong_token_gets_401_asking_for_a_bearer_token(
    api_app: Any, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    answer = api_app.test_client().get("/api/launches", headers=headers)

    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert answer.json == {
        "error": "missing or wrong bearer token: send Authorization: Bearer <ADMIN_TOKEN>"
    }


def test_token_is_accepted_whatever_the_case_of_the_scheme(api_app: Any) -> None:
    answer = api_app.test_client().get(
        "/api/launches", headers={"Authorization": f"bearer {TOKEN}"}
    )
    assert answer.status_code == 200


def test_non_ascii_token_is_compared_as_the_utf8_bytes_sent(
    make_settings: Callable[..., Settings], make_app: Callable[[Settings], Any]
) -> None:
    app = make_app(make_settings(admin_token="пароль"))
    raw = "Bearer пароль".encode().decode("latin-1")  # how WSGI hands the header over

    answer = app.test_client().get("/api/launches", headers={"Authorization": raw})

    assert answer.status_code == 200


def test_openapi_document_is_served_without_a_token_even_when_the_api_is_off(
    client: Any,
) -> None:
    answer = client.get("/api/openapi.json")
    assert answer.status_code == 200
    assert answer.json["openapi"] == "3.1.0"


# ------------------------------------------------------------------------- listing


def test_launch_is_listed_with_every_field(
    get: Callable[..., Any], make_launch: Callable[..., int]
) -> None:
    make_launch(status=LaunchStatus.FAILED, reason="bad bot", last_error="400", attempts=2)

    answer = get("/api/launches")

    assert answer.status_code == 200
    assert answer.json == {
        "launches": [
            {
                "id": 1,
                "delivery_id": None,
                "rule": "qualified",
                "event_type": "lead.status_changed",
                "event_group": "leads[status]",
                "event_index": 0,
                "bot_id": 101,
                "entity_type": 2,
                "entity": "lead",
                "entity_id": 27754599,
                "change_key": "lead:27754599@1727700894:s59936202",
                "status": "failed",
                "reason": "bad bot",
                "blocked_by": None,
                "not_before": "2024-10-01T09:00:00Z",
                "attempts": 2,
                "retries": 0,
                "last_error": "400",
                "created_at": "2024-10-01T09:00:00Z",
                "updated_at": "2024-10-01T09:00:00Z",
                "sending_at": None,
                "settled_at": None,
                "claimed_by": None,
                "call_id": None,
            }
        ],
        "next_cursor": None,
    }


def test_empty_log_is_an_empty_last_page(get: Callable[..., Any]) -> None:
    assert get("/api/launches").json == {"launches": [], "next_cursor": None}


def test_pages_follow_next_cursor_newest_first_until_the_last_page(
    get: Callable[..., Any], sessions: sessionmaker[Session]
) -> None:
    add_launches(sessions, 7)

    first = get("/api/launches", limit=3)
    second = get("/api/launches", limit=3, cursor=first.json["next_cursor"])
    third = get("/api/launches", limit=3, cursor=second.json["next_cursor"])

    assert [ids(first), ids(second), ids(third)] == [[7, 6, 5], [4, 3, 2], [1]]
    assert third.json["next_cursor"] is None


def test_page_that_ends_exactly_at_the_last_launch_has_no_next_cursor(
    get: Callable[..., Any], sessions: sessionmaker[Session]
) -> None:
    add_launches(sessions, 3)
    assert get("/api/launches", limit=3).json["next_cursor"] is None


def test_next_page_is_unchanged_by_launches_added_meanwhile(
    get: Callable[..., Any], sessions: sessionmaker[Session]
) -> None:
    add_launches(sessions, 4)
    first = get("/api/launches", limit=2)
    add_launches(sessions, 2, first_entity=5000)

    second = get("/api/launches", limit=2, cursor=first.json["next_cursor"])

    assert ids(second) == [2, 1]


def test_limit_defaults_to_50(get: Callable[..., Any], sessions: sessionmaker[Session]) -> None:
    add_launches(sessions, 51)
    answer = get("/api/launches")
    assert len(answer.json["launches"]) == 50
    assert answer.json["next_cursor"] is not None


def test_cursor_past_every_id_starts_from_the_top(
    get: Callable[..., Any], sessions: sessionmaker[Session]
) -> None:
    add_launches(sessions, 2)
    assert ids(get("/api/launches", cursor="9" * 30)) == [2, 1]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (["sent"], [2]),
        (["sent", "failed"], [3, 2]),
        (["sent,failed"], [3, 2]),
        (["sent,failed", "pending"], [3, 2, 1]),
        (["sent", "sent"], [2]),
    ],
)
def test_status_filter_takes_repeated_and_comma_separated_values(
    get: Callable[..., Any], make_launch: Callable[..., int], status: list[str], expected: list[int]
) -> None:
    for state in (LaunchStatus.PENDING, LaunchStatus.SENT, LaunchStatus.FAILED):
        make_launch(status=state)
    assert ids(get("/api/launches", status=status)) == expected


def test_rule_bot_and_entity_filters_each_narrow_the_list(
    get: Callable[..., Any], make_launch: Callable[..., int]
) -> None:
    make_launch()
    make_launch(rule="new-chat", bot_id=202, entity_type=1, entity_id=93589657)
    make_launch(rule="new-chat", bot_id=202, entity_type=1, entity_id=5)

    assert ids(get("/api/launches", rule="new-chat")) == [3, 2]
    assert ids(get("/api/launches", bot_id=101)) == [1]
    assert ids(get("/api/launches", entity_id=93589657)) == [2]
    assert ids(get("/api/launches", rule="new-chat", entity_id=5)) == [3]
    assert ids(get("/api/launches", rule="no-such-rule")) == []


def test_since_and_until_take_times_dates_and_durations_ago(
    get: Callable[..., Any], make_launch: Callable[..., int]
) -> None:
    now = datetime.now(UTC)
    make_launch(created_at=now - timedelta(days=3))
    make_launch(created_at=now - timedelta(hours=3))
    make_launch(created_at=now - timedelta(minutes=30))

    assert ids(get("/api/launches", since="2h")) == [3]
    assert ids(get("/api/launches", since="1d", until="1h")) == [2]
    assert ids(get("/api/launches", until="2h59m")) == [2, 1]
    day = (now - timedelta(days=3)).date()
    assert ids(get("/api/launches", until=(day + timedelta(days=1)).isoformat())) == [1]
    assert ids(get("/api/launches", since=day.isoformat(), until=f"{day}T00:00:00Z")) == []


def test_since_takes_an_offset_and_compares_in_utc(
    get: Callable[..., Any], make_launch: Callable[..., int]
) -> None:
    make_launch(created_at=T0)  # 09:00 UTC is 12:00 in Moscow

    assert ids(get("/api/launches", since="2024-10-01T12:00:00+03:00")) == [1]
    assert ids(get("/api/launches", since="2024-10-01T12:00:01+03:00")) == []
    assert ids(get("/api/launches", since="2024-10-01t08:59:59.5z")) == [1]


def test_times_at_the_ends_of_the_calendar_do_not_overflow(
    get: Callable[..., Any], make_launch: Callable[..., int]
) -> None:
    make_launch()
    assert ids(get("/api/launches", since="0001-01-01T00:00:00+05:00")) == [1]
    assert ids(get("/api/launches", since="9999-12-31T23:59:59-05:00")) == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "bogus"}, f"status: expected one of {STATUSES}, got 'bogus'"),
        ({"status": "sent,bogus"}, f"status: expected one of {STATUSES}, got 'bogus'"),
        ({"status": "sent,"}, f"status: expected one of {STATUSES}, got ''"),
        ({"status": "Sent"}, f"status: expected one of {STATUSES}, got 'Sent'"),
        ({"rule": ""}, "rule: expected a rule name, got ''"),
        ({"rule": "a\x00b"}, "rule: expected a rule name, got 'a\\x00b'"),
        ({"bot_id": "abc"}, "bot_id: expected a positive integer, got 'abc'"),
        ({"bot_id": "-1"}, "bot_id: expected a positive integer, got '-1'"),
        ({"bot_id": "٣"}, "bot_id: expected a positive integer, got '٣'"),
        ({"entity_id": "0"}, "entity_id: expected a positive integer, got '0'"),
        (
            {"entity_id": "9223372036854775808"},
            "entity_id: expected a positive integer, got '9223372036854775808'",
        ),
        ({"since": "yesterday"}, f"since: {MOMENT}, got 'yesterday'"),
        ({"since": "2024-10-01T09:00"}, f"since: {MOMENT}, got '2024-10-01T09:00'"),
        ({"since": "2024-02-30"}, f"since: {MOMENT}, got '2024-02-30'"),
        ({"since": ""}, f"since: {MOMENT}, got ''"),
        ({"since": "2h\n"}, f"since: {MOMENT}, got '2h\\n'"),
        ({"until": "24"}, f"until: {MOMENT}, got '24'"),
        ({"until": "10000d"}, f"until: {MOMENT}, got '10000d'"),
        ({"limit": "0"}, "limit: expected an integer from 1 to 500, got '0'"),
        ({"limit": "501"}, "limit: expected an integer from 1 to 500, got '501'"),
        ({"limit": "ten"}, "limit: expected an integer from 1 to 500, got 'ten'"),
        ({"cursor": "abc"}, "cursor: expected the next_cursor of a previous page, got 'abc'"),
        ({"limit": ["1", "2"]}, "limit: given 2 times, expected once"),
        (
            {"statuz": "sent"},
            "statuz: unknown parameter; expected one of status, rule, bot_id, entity_id, "
            "since, until, limit, cursor",
        ),
    ],
)
def test_bad_parameter_gets_400_naming_it(
    get: Callable[..., Any], params: dict[str, Any], message: str
) -> None:
    answer = get("/api/launches", **params)
    assert answer.status_code == 400
    assert answer.json == {"error": message}


# -------------------------------------------------------------------------- details


def test_launch_shows_its_delivery_and_every_call_it_rode_in_order(
    api_app: Any,
    get: Callable[..., Any],
    sessions: sessionmaker[Session],
    webhook_body: Callable[[str], bytes],
) -> None:
    stored = api_app.test_client().post(
        "/webhooks/amocrm/s3cret", data=webhook_body("status_lead"), content_type=FORM
    )
    launch_id = 1
    first = add_call(sessions, launch_id, position=3)
    second = add_call(
        sessions, launch_id, position=0, launch_count=1, status_code=200, outcome="accepted"
    )

    answer = get(f"/api/launches/{launch_id}")

    assert stored.json == {"delivery_id": 1, "events": 1, "launches": 1}
    assert answer.status_code == 200
    body = answer.json
    assert body["launch"]["id"] == launch_id
    assert body["launch"]["delivery_id"] == 1
    assert set(body["delivery"]) == {
        "id",
        "received_at",
        "remote_addr",
        "content_type",
        "account_id",
        "account_subdomain",
        "event_count",
        "launch_count",
        "duplicate_count",
        "status",
    }
    assert (body["delivery"]["id"], body["delivery"]["status"]) == (1, "accepted")
    assert (body["delivery"]["account_id"], body["delivery"]["content_type"]) == (30112233, FORM)
    assert body["calls"] == [
        {
            "id": first,
            "position": 3,
            "dispatcher": "host:1",
            "endpoint": "/api/v2/salesbot/run",
            "launch_count": 4,
            "started_at": "2024-10-01T09:00:00Z",
            "finished_at": "2024-10-01T09:00:01Z",
            "status_code": 400,
            "outcome": "bad_item",
            "error": None,
            "response_excerpt": None,
        },
        {
            "id": second,
            "position": 0,
            "dispatcher": "host:1",
            "endpoint": "/api/v2/salesbot/run",
            "launch_count": 1,
            "started_at": "2024-10-01T09:00:00Z",
            "finished_at": "2024-10-01T09:00:01Z",
            "status_code": 200,
            "outcome": "accepted",
            "error": None,
            "response_excerpt": None,
        },
    ]


def test_launch_not_made_from_a_webhook_shows_no_delivery_and_no_calls(
    get: Callable[..., Any], make_launch: Callable[..., int]
) -> None:
    launch_id = make_launch()
    answer = get(f"/api/launches/{launch_id}")
    assert (answer.json["delivery"], answer.json["calls"]) == (None, [])


def test_delivery_shows_its_body_as_text_and_its_launches(
    api_app: Any, get: Callable[..., Any], webhook_body: Callable[[str], bytes]
) -> None:
    client = api_app.test_client()
    client.post("/webhooks/amocrm/s3cret", data=webhook_body("status_lead"), content_type=FORM)

    answer = get("/api/deliveries/1")

    assert answer.status_code == 200
    assert answer.json["body"] == webhook_body("status_lead").decode()
    assert answer.json["delivery"]["event_count"] == 1
    assert answer.json["delivery"]["launch_count"] == 1
    assert [launch["rule"] for launch in answer.json["launches"]] == ["qualified"]


def test_a_deliverys_launches_are_shown_a_window_at_a_time(
    get: Callable[..., Any], sessions: sessionmaker[Session]
) -> None:
    """A bulk webhook makes tens of thousands of launches: all of them in one answer was
    16 MB for 30,000. A window, by id, as the explanation pages its events."""
    delivery_id = add_delivery(sessions, b"account%5Bid%5D=30112233")
    add_launches(sessions, 120)
    with sessions.begin() as session:
        session.execute(update(Launch).values(delivery_id=delivery_id))
        ids = list(session.scalars(select(Launch.id).order_by(Launch.id)))

    first = get(f"/api/deliveries/{delivery_id}").json
    later = get(f"/api/deliveries/{delivery_id}", offset=100, limit=30).json
    refused = get(f"/api/deliveries/{delivery_id}", **{"from": 3})

    assert [launch["id"] for launch in first["launches"]] == ids[:50]
    assert (first["offset"], first["limit"]) == (0, 50)
    assert [launch["id"] for launch in later["launches"]] == ids[100:]
    assert refused.status_code == 400 and "from" in refused.json["error"]


def test_delivery_body_that_is_not_utf8_is_shown_with_replacement_characters(
    get: Callable[..., Any], sessions: sessionmaker[Session]
) -> None:
    delivery_id = add_delivery(sessions, b"name=caf\xe9")
    answer = get(f"/api/deliveries/{delivery_id}")
    assert answer.json["body"] == "name=caf\ufffd"
    assert answer.json["launches"] == []


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/launches/42", "no launch with id 42"),
        ("/api/deliveries/42", "no delivery with id 42"),
        ("/api/launches/0", "no launch with id 0"),
        ("/api/launches/99999999999999999999", "no launch with id 99999999999999999999"),
    ],
)
def test_unknown_id_gets_404_naming_it(get: Callable[..., Any], path: str, message: str) -> None:
    answer = get(path)
    assert answer.status_code == 404
    assert answer.json == {"error": message}


def test_unreachable_database_answers_503_without_a_traceback(
    api_app: Any, get: Callable[..., Any]
) -> None:
    from automation.store.database import make_engine

    broken = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    api_app.extensions["automation"].sessions = sessionmaker(broken)
    answers = [get("/api/launches"), get("/api/launches/1"), get("/api/deliveries/1")]
    broken.dispose()

    assert [answer.status_code for answer in answers] == [503, 503, 503]
    assert answers[0].json == {"error": "database unavailable, retry later"}


def test_the_viewer_token_reads_the_api_too(
    make_settings: Callable[..., Settings], make_app: Callable[[Settings], Any]
) -> None:
    app = make_app(make_settings(admin_token=TOKEN, viewer_token="viewer-t0ken"))
    client = app.test_client()
    assert (
        client.get("/api/launches", headers={"Authorization": "Bearer viewer-t0ken"}).status_code
        == 200
    )
    assert (
        client.get("/api/launches", headers={"Authorization": "Bearer viewer-t0kenx"}).status_code
        == 401
    )
