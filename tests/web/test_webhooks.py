"""The webhook endpoint through Flask's test client, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select

from automation.store.models import Delivery, Launch
from automation.store.states import DeliveryStatus, LaunchStatus
from tests.conftest import incoming_message

FORM = "application/x-www-form-urlencoded"


STATUS_LEAD_ACCOUNT = 30112233  # account[id] of fixtures/webhooks/status_lead.form


def post(client: Any, body: bytes, secret: str = "s3cret", **kwargs: Any) -> Any:
    kwargs.setdefault("content_type", FORM)
    return client.post(f"/webhooks/amocrm/{secret}", data=body, **kwargs)


def rows(app: Any, model: type) -> list[Any]:
    with app.extensions["automation"].sessions() as session:
        return list(session.scalars(select(model).order_by(model.id)))


def test_stage_change_is_stored_with_its_launch_before_the_answer(
    app: Any, client: Any, webhook_body: Callable[[str], bytes]
) -> None:
    answer = post(client, webhook_body("status_lead"))

    assert answer.status_code == 200
    assert answer.json == {"delivery_id": 1, "events": 1, "launches": 1}
    [delivery] = rows(app, Delivery)
    assert delivery.status is DeliveryStatus.ACCEPTED
    assert delivery.body == webhook_body("status_lead")
    assert (delivery.account_id, delivery.account_subdomain) == (30112233, "mybrand")
    assert (delivery.event_count, delivery.launch_count, delivery.duplicate_count) == (1, 1, 0)
    [launch] = rows(app, Launch)
    assert launch.delivery_id == delivery.id
    assert (launch.rule, launch.bot_id, launch.entity_type, launch.entity_id) == (
        "qualified",
        101,
        2,
        27754599,
    )
    assert launch.status is LaunchStatus.PENDING
    assert launch.event_type == "lead.status_changed"
    assert launch.not_before == launch.created_at


def test_trailing_slash_is_accepted_as_kommo_requires(
    client: Any, webhook_body: Callable[[str], bytes]
) -> None:
    answer = client.post(
        "/webhooks/amocrm/s3cret/", data=webhook_body("add_talk"), content_type=FORM
    )
    assert answer.status_code == 200
    assert answer.json["launches"] == 1


def test_talk_launches_the_bot_on_the_chat_contact(
    app: Any, client: Any, webhook_body: Callable[[str], bytes]
) -> None:
    post(client, webhook_body("add_talk"))
    [launch] = rows(app, Launch)
    assert (launch.bot_id, launch.entity_type, launch.entity_id) == (202, 1, 93589657)


def test_same_webhook_delivered_twice_yields_one_launch(
    app: Any, client: Any, webhook_body: Callable[[str], bytes]
) -> None:
    first = post(client, webhook_body("status_lead"))
    second = post(client, webhook_body("status_lead"))

    assert first.json["launches"] == 1
    assert second.json["launches"] == 0
    assert len(rows(app, Launch)) == 1
    deliveries = rows(app, Delivery)
    assert [d.duplicate_count for d in deliveries] == [0, 1]


def test_stage_move_sent_as_update_and_as_status_yields_one_launch(app: Any, client: Any) -> None:
    item = {
        "id": "27754599",
        "status_id": "59936202",
        "old_status_id": "59936198",
        "pipeline_id": "7173574",
        "updated_at": "1727700894",
    }
    account = {"account[id]": "30112233", "account[subdomain]": "mybrand"}
    for group in ("update", "status"):
        fields = {f"leads[{group}][0][{key}]": value for key, value in item.items()}
        post(client, urlencode({**account, **fields}).encode())

    [launch] = rows(app, Launch)
    assert launch.event_group == "leads[update]"
    assert [d.duplicate_count for d in rows(app, Delivery)] == [0, 1]


def test_cooldown_records_a_skipped_launch_with_its_reason(app: Any, client: Any) -> None:
    assert post(client, incoming_message("m-1")).json["launches"] == 1
    assert post(client, incoming_message("m-2")).json["launches"] == 0

    first, second = rows(app, Launch)
    assert first.status is LaunchStatus.PENDING
    assert second.status is LaunchStatus.SKIPPED
    assert second.reason is not None
    assert second.reason.startswith(f"cooldown: launch #{first.id} of bot 303")
    assert second.settled_at is not None


def test_unknown_group_is_stored_as_unrecognized_and_answered_200(app: Any, client: Any) -> None:
    answer = post(client, b"account%5Bid%5D=30112233&catalogs%5Badd%5D%5B0%5D%5Bid%5D=5")

    assert answer.status_code == 200
    assert answer.json["events"] == 1
    assert answer.json["launches"] == 0
    [delivery] = rows(app, Delivery)
    assert delivery.status is DeliveryStatus.UNRECOGNIZED


def test_json_body_with_the_same_shape_is_accepted(app: Any, client: Any) -> None:
    body = (
        b'{"account": {"id": "30112233"}, "talk": {"add": [{"talk_id": "7", "contact_id": "5"}]}}'
    )
    answer = post(client, body, content_type="application/json")
    assert answer.status_code == 200
    assert answer.json["launches"] == 1
    [launch] = rows(app, Launch)
    assert launch.entity_id == 5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"leads%5Badd=1", "field 'leads[add': malformed bracket key"),
        (b"\xff\xfe", "body is not UTF-8 (byte 0)"),
        (b"hello=world", None),
    ],
)
def test_undecodable_body_gets_400_naming_the_problem_and_stores_nothing(
    app: Any, client: Any, body: bytes, message: str | None
) -> None:
    answer = post(client, body)
    if message is None:  # no account block: an unknown group, still stored
        assert answer.status_code == 200
        return
    assert answer.status_code == 400
    assert answer.json == {"error": message}
    assert rows(app, Delivery) == []


def test_wrong_secret_gets_404_and_the_secret_is_not_logged(
    client: Any, webhook_body: Callable[[str], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    logging.getLogger("automation").propagate = True
    with caplog.at_level("INFO"):
        answer = post(client, webhook_body("status_lead"), secret="guess-me")
    assert answer.status_code == 404
    assert "wrong secret" in caplog.text
    assert "guess-me" not in caplog.text


def test_unset_secret_answers_503_saying_what_to_set(
    make_settings: Callable[..., Any],
    make_app: Callable[[Any], Any],
    webhook_body: Callable[[str], bytes],
) -> None:
    app = make_app(make_settings(webhook_secret=None))
    answer = post(app.test_client(), webhook_body("status_lead"), secret="anything")
    assert answer.status_code == 503
    assert "set WEBHOOK_SECRET" in answer.json["error"]


def test_body_over_the_limit_gets_413(
    make_settings: Callable[..., Any],
    make_app: Callable[[Any], Any],
    webhook_body: Callable[[str], bytes],
) -> None:
    app = make_app(make_settings(max_body_bytes=100))
    answer = post(app.test_client(), webhook_body("status_lead"))
    assert answer.status_code == 413
    assert "MAX_BODY_BYTES=100" in answer.json["error"]


def test_unsupported_content_type_gets_415(client: Any) -> None:
    answer = post(client, b"<xml/>", content_type="text/xml")
    assert answer.status_code == 415
    assert answer.json["error"] == (
        "content type 'text/xml' not supported; "
        "expected application/x-www-form-urlencoded or application/json"
    )


def test_webhook_from_another_account_gets_403(
    make_settings: Callable[..., Any],
    make_app: Callable[[Any], Any],
    webhook_body: Callable[[str], bytes],
) -> None:
    app = make_app(make_settings(amocrm_account_id=111))
    answer = post(app.test_client(), webhook_body("status_lead"))
    assert answer.status_code == 403
    assert answer.json["error"] == (
        f"webhook with account[id] {STATUS_LEAD_ACCOUNT}; AMOCRM_ACCOUNT_ID allows only 111"
    )


def test_webhook_without_an_account_gets_403_saying_so(
    make_settings: Callable[..., Any], make_app: Callable[[Any], Any]
) -> None:
    app = make_app(make_settings(amocrm_account_id=111, amocrm_subdomain="mybrand"))
    answer = post(app.test_client(), b"leads[status][0][id]=1&leads[status][0][status_id]=2")
    assert answer.status_code == 403
    assert answer.json["error"] == "webhook with no account[id]; AMOCRM_ACCOUNT_ID allows only 111"


def older_body(account_id: str) -> bytes:
    """A 2016–2018 stage change: only `account[subdomain]` at the top, the id in the item."""
    return urlencode(
        [
            ("leads[status][0][id]", "27754599"),
            ("leads[status][0][status_id]", "59936202"),
            ("leads[status][0][account_id]", account_id),
            ("account[subdomain]", "mybrand"),
        ]
    ).encode()


def test_older_body_with_the_account_id_only_in_its_items_is_accepted(
    make_settings: Callable[..., Any], make_app: Callable[[Any], Any]
) -> None:
    app = make_app(make_settings(amocrm_account_id=STATUS_LEAD_ACCOUNT))

    answer = post(app.test_client(), older_body(str(STATUS_LEAD_ACCOUNT)))

    assert answer.status_code == 200
    assert answer.json["launches"] == 1
    [delivery] = rows(app, Delivery)
    assert delivery.account_id == STATUS_LEAD_ACCOUNT


def test_older_body_of_another_account_gets_403_naming_the_item_field(
    make_settings: Callable[..., Any], make_app: Callable[[Any], Any]
) -> None:
    app = make_app(make_settings(amocrm_account_id=STATUS_LEAD_ACCOUNT))

    answer = post(app.test_client(), older_body("999"))

    assert answer.status_code == 403
    assert answer.json["error"] == (
        "webhook with leads[status][0][account_id] 999; "
        f"AMOCRM_ACCOUNT_ID allows only {STATUS_LEAD_ACCOUNT}"
    )


def test_older_body_whose_items_disagree_on_the_account_gets_400(client: Any) -> None:
    body = older_body("30112233") + b"&leads%5Bstatus%5D%5B1%5D%5Baccount_id%5D=999"

    answer = post(client, body)

    assert answer.status_code == 400
    assert answer.json["error"] == (
        "field 'leads[status][1][account_id]': account 999 differs from 30112233 in "
        "leads[status][0][account_id]; one webhook comes from one account"
    )


def test_webhook_from_another_subdomain_gets_403(
    make_settings: Callable[..., Any],
    make_app: Callable[[Any], Any],
    webhook_body: Callable[[str], bytes],
) -> None:
    app = make_app(make_settings(amocrm_subdomain="other"))
    answer = post(app.test_client(), webhook_body("status_lead"))
    assert answer.status_code == 403
    assert answer.json["error"].endswith("; AMOCRM_SUBDOMAIN allows only 'other'")
    assert answer.json["error"].startswith("webhook with account[subdomain] '")


def test_unreachable_database_answers_503_without_a_traceback(
    app: Any, client: Any, webhook_body: Callable[[str], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    from automation.store.database import make_engine

    broken = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    monkeypatch.setattr(app.extensions["automation"], "engine", broken)
    answer = post(client, webhook_body("status_lead"))
    broken.dispose()
    assert answer.status_code == 503
    assert answer.json == {"error": "database unavailable; the webhook was not stored, retry later"}


def test_every_fixture_is_accepted_and_counted(
    app: Any, client: Any, webhook_body: Callable[[str], bytes]
) -> None:
    names = sorted(
        path.stem for path in (Path(__file__).parents[1] / "fixtures/webhooks").glob("*.form")
    )
    for name in names:
        assert post(client, webhook_body(name)).status_code == 200, name
    with app.extensions["automation"].sessions() as session:
        count = session.scalar(select(func.count()).select_from(Delivery))
    assert count == len(names)


def test_a_doubled_slash_gets_a_json_404_not_an_html_redirect(
    client: Any, webhook_body: Callable[[str], bytes]
) -> None:
    answer = client.post(
        "/webhooks/amocrm/s3cret//", data=webhook_body("status_lead"), content_type=FORM
    )
    assert answer.status_code == 404
    assert answer.is_json


class Lines(logging.Handler):
    """Keeps the messages of the webhook logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


REJECTIONS = [
    # (settings, secret, body, content type, status, reason in the line)
    ({}, "guess-me", b"account[id]=1", FORM, 404, "reason=wrong secret"),
    ({}, "s3cret", b"leads%5Badd=1", FORM, 400, "reason="),
    ({}, "s3cret", b"<xml/>", "text/xml", 415, "reason=content type 'text/xml'"),
    ({"max_body_bytes": 10}, "s3cret", b"account[id]=1&x=1", FORM, 413, "MAX_BODY_BYTES=10"),
    ({"amocrm_account_id": 5}, "s3cret", b"account[id]=1", FORM, 403, "AMOCRM_ACCOUNT_ID"),
    ({"webhook_secret": None}, "s3cret", b"account[id]=1", FORM, 503, "set WEBHOOK_SECRET"),
]


@pytest.mark.parametrize(
    ("overrides", "secret", "body", "content_type", "status", "reason"),
    REJECTIONS,
    ids=[str(case[4]) for case in REJECTIONS],
)
def test_every_rejected_webhook_logs_one_line_with_why_remote_and_length(
    make_settings: Callable[..., Any],
    make_app: Callable[[Any], Any],
    overrides: dict[str, Any],
    secret: str,
    body: bytes,
    content_type: str,
    status: int,
    reason: str,
) -> None:
    app, lines = make_app(make_settings(**overrides)), Lines()
    logger = logging.getLogger("automation.webhooks")
    logger.addHandler(lines)
    try:
        answer = post(app.test_client(), body, secret=secret, content_type=content_type)
    finally:
        logger.removeHandler(lines)

    assert answer.status_code == status
    [line] = lines.lines
    assert line.startswith(f"webhook rejected status={status} remote=127.0.0.1 length={len(body)} ")
    assert reason in line
    assert "s3cret" not in line and "guess-me" not in line


def test_a_webhook_the_database_could_not_store_logs_why(
    app: Any, client: Any, webhook_body: Callable[[str], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    from automation.store.database import make_engine

    broken, lines = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"), Lines()
    monkeypatch.setattr(app.extensions["automation"], "engine", broken)
    logging.getLogger("automation.webhooks").addHandler(lines)
    try:
        answer = post(client, webhook_body("status_lead"))
    finally:
        logging.getLogger("automation.webhooks").removeHandler(lines)
        broken.dispose()

    assert answer.status_code == 503
    [line] = lines.lines
    assert line.startswith("webhook rejected status=503 remote=127.0.0.1 length=")
    # Which error it was (a refused connection here, a deadlock or a full disk elsewhere),
    # from the driver's message, never SQLAlchemy's (which appends the parameters):
    assert "reason=database error psycopg.OperationalError: connection failed:" in line
    assert "Connection refused" in line and "[SQL" not in line
