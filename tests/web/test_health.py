"""`/healthz` and reloading the rules file while the server runs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from automation.config import Settings
from automation.dispatch import loop as dispatch
from automation.store import budget, dispatchers
from automation.store.models import ApiCall, Launch, RateLimit
from tests.conftest import TEST_RULES
from tests.fake_amocrm import ACCESS_TOKEN, FakeAmoCRM
from tests.launches import add_launches


def _touch_later(path: Path, text: str) -> None:
    """Write `text` with an mtime in the future, so the loader sees a change at once."""
    path.write_text(text)
    later = time.time() + 5
    os.utime(path, (later, later))


def test_healthz_reports_database_schema_and_rules(client: Any) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200
    body = answer.json
    assert body["status"] == "ok"
    assert body["database"]["reachable"] is True
    assert body["database"]["schema_current"] is True
    assert body["rules"]["loaded"] is True
    assert body["rules"]["rule_count"] == 3
    assert body["rules"]["last_error"] is None
    assert body["rules"]["version_id"] == 1
    assert body["rules"]["version_first_loaded_at"].startswith("20")
    assert body["webhook"] == {"configured": True}
    assert body["reasons"] == []
    assert body["dispatch"]["live_dispatchers"] == 0
    assert body["amocrm"] == {"window_seconds": 300, "calls": 0, "failed": 0, "last_call": None}


def test_healthz_shows_the_new_version_after_a_reload(
    app: Any, client: Any, rules_file: Path
) -> None:
    rules_file.write_text(TEST_RULES.replace("bot_id: 101", "bot_id: 999"))
    app.extensions["automation"].rules.reload()

    rules = client.get("/healthz").json["rules"]
    assert rules["version_id"] == 2
    assert rules["version_id"] == app.extensions["automation"].versions[rules["content_hash"]].id


def test_broken_rules_file_keeps_the_last_good_rules_and_shows_in_healthz(
    app: Any, client: Any, rules_file: Path, webhook_body: Callable[[str], bytes]
) -> None:
    time.sleep(1.1)  # the loader looks at the file at most once a second
    _touch_later(rules_file, "version: 1\nrules:\n  - name: x\n    on: lead.nope\n")

    answer = client.get("/healthz")
    health = answer.json
    assert (answer.status_code, health["status"]) == (200, "degraded")
    assert health["rules"]["rule_count"] == 3
    assert "lead.nope" in health["rules"]["last_error"]
    [reason] = health["reasons"]
    assert reason.startswith("the rules file is broken; the last good rules (loaded ")
    assert f"{rules_file}:4:" in reason  # file:line of the mistake
    answer = client.post(
        "/webhooks/amocrm/s3cret",
        data=webhook_body("status_lead"),
        content_type="application/x-www-form-urlencoded",
    )
    assert answer.json["launches"] == 1


def test_changed_rules_file_is_picked_up_without_restart(
    client: Any, rules_file: Path, webhook_body: Callable[[str], bytes]
) -> None:
    time.sleep(1.1)
    _touch_later(rules_file, TEST_RULES.replace("bot_id: 101", "bot_id: 999"))
    answer = client.post(
        "/webhooks/amocrm/s3cret",
        data=webhook_body("status_lead"),
        content_type="application/x-www-form-urlencoded",
    )
    assert answer.json["launches"] == 1
    assert client.get("/healthz").json["rules"]["last_error"] is None


def test_without_a_webhook_secret_the_server_is_unhealthy_and_says_why(
    make_settings: Callable[..., Any], make_app: Callable[[Any], Any], caplog: Any
) -> None:
    app = make_app(make_settings(webhook_secret=None))

    answer = app.test_client().get("/healthz")

    assert answer.status_code == 503
    assert answer.json["status"] == "unhealthy"
    assert answer.json["reasons"] == ["WEBHOOK_SECRET is not set: every webhook gets 503"]
    assert answer.json["webhook"] == {
        "configured": False,
        "error": "WEBHOOK_SECRET is not set: every webhook gets 503",
    }
    assert any("WEBHOOK_SECRET is not set" in record.getMessage() for record in caplog.records)


# ------------------------------------------------------ degraded: nothing goes out


@pytest.fixture
def live_app(make_settings: Callable[..., Settings], make_app: Callable[[Settings], Any]) -> Any:
    """An app whose dispatcher would send to the fake amoCRM with a fixed token."""

    def build(base_url: str) -> Any:
        settings = make_settings(amocrm_base_url=base_url, amocrm_access_token=ACCESS_TOKEN)
        return make_app(settings)

    return build


def dispatch_once(app: Any, base_url: str | None = None, read_timeout: float = 2.0) -> None:
    """One `automation dispatch --once` of this app's settings (to `base_url` if given)
    and database; the back-off and any hold of the earlier runs waived, so that every
    run makes a call."""
    state = app.extensions["automation"]
    with state.sessions.begin() as session:
        session.execute(update(Launch).values(not_before=datetime.now(UTC) - timedelta(seconds=1)))
        session.execute(update(RateLimit).values(hold_until=None))
    settings = state.settings
    if base_url is not None:
        settings = settings.model_copy(update={"amocrm_base_url": base_url})
    dispatch.build(settings, state.sessions, read_timeout=read_timeout).run(once=True)


def test_healthz_is_degraded_while_amocrm_answers_500_and_says_how_many_of_how_many(
    live_app: Callable[[str], Any], fake: FakeAmoCRM
) -> None:
    app = live_app(fake.url)
    add_launches(app.extensions["automation"].sessions, 3)
    fake.fail_next(1000, status=500)  # amoCRM down for as long as the test runs

    for _ in range(3):
        dispatch_once(app)
    answer = app.test_client().get("/healthz")

    made = len(fake.salesbot_calls())
    assert made >= 3
    assert (answer.status_code, answer.json["status"]) == (200, "degraded")
    amocrm = answer.json["amocrm"]
    assert (amocrm["calls"], amocrm["failed"], amocrm["window_seconds"]) == (made, made, 300)
    assert (amocrm["last_call"]["outcome"], amocrm["last_call"]["status_code"]) == (
        "server_error",
        500,
    )
    [reason] = [r for r in answer.json["reasons"] if r.startswith("amoCRM calls")]
    assert reason.startswith(
        f"amoCRM calls are failing: {made} of {made} calls in the last 5 minutes failed; "
        "the last one, at "
    )
    assert reason.endswith(": server_error (HTTP 500)")
    assert answer.json["dispatch"]["live_dispatchers"] == 0  # --once has stopped


@pytest.mark.parametrize(
    ("break_amocrm", "outcome"),
    [
        (lambda fake: fake.stall_next(1000, seconds=3), "uncertain"),  # read timeout
        (lambda fake: fake.drop_next(1000, reset=True), "uncertain"),  # reset after sending
        (lambda fake: fake.stop(), "not_sent"),  # connection refused
    ],
    ids=["read timeout", "connection reset", "connection refused"],
)
def test_healthz_is_degraded_after_timeouts_and_connection_errors(
    live_app: Callable[[str], Any],
    fake: FakeAmoCRM,
    break_amocrm: Callable[[FakeAmoCRM], None],
    outcome: str,
) -> None:
    app = live_app(fake.url)
    add_launches(app.extensions["automation"].sessions, 2)
    break_amocrm(fake)

    dispatch_once(app, read_timeout=0.5)
    body = app.test_client().get("/healthz").json

    assert body["status"] == "degraded"
    assert body["amocrm"]["calls"] == body["amocrm"]["failed"] >= 1
    assert body["amocrm"]["last_call"]["outcome"] == outcome
    assert body["amocrm"]["last_call"]["status_code"] is None
    assert any(r.endswith(f": {outcome} (no HTTP answer)") for r in body["reasons"])


def test_healthz_is_ok_again_once_a_call_goes_through(
    live_app: Callable[[str], Any], fake: FakeAmoCRM
) -> None:
    app = live_app(fake.url)
    add_launches(app.extensions["automation"].sessions, 2)
    with FakeAmoCRM() as down:
        down.fail_next(1000, status=503)
        dispatch_once(app, down.url)
        dispatch_once(app, down.url)
        failed = len(down.salesbot_calls())
    assert app.test_client().get("/healthz").json["status"] == "degraded"

    dispatch_once(app)  # amoCRM is back
    body = app.test_client().get("/healthz").json

    assert (body["status"], body["reasons"]) == ("ok", [])
    assert (body["amocrm"]["calls"], body["amocrm"]["failed"]) == (failed + 1, failed)
    assert body["amocrm"]["last_call"]["outcome"] == "accepted"


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        (["accepted", "accepted", "accepted", "server_error"], "ok"),  # a blip among many
        (["server_error", "server_error", "server_error", "accepted"], "ok"),  # it is back
        (["accepted", "server_error", "uncertain"], "degraded"),  # most fail, the last too
        (["rate_limited", "rate_limited", "rate_limited"], "ok"),  # pacing, not a failure
        (["bad_request", "bad_request"], "ok"),  # amoCRM blames launches: it works
        (["dry_run", "dry_run"], "ok"),  # nothing was sent
        (["forbidden"], "degraded"),
        (["other"], "degraded"),  # a 404 from a proxy: not the salesbot API answering
    ],
)
def test_healthz_judges_the_amocrm_calls_of_the_window(
    client: Any, sessions: sessionmaker[Session], outcomes: list[str], status: str
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=4)
    with sessions.begin() as session:
        for i, outcome in enumerate(outcomes):
            session.add(finished_call(start + timedelta(seconds=i), outcome))

    assert client.get("/healthz").json["status"] == status


def test_calls_older_than_the_window_do_not_count(
    client: Any, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as session:
        session.add(finished_call(datetime.now(UTC) - timedelta(minutes=6), "server_error"))

    body = client.get("/healthz").json

    assert (body["status"], body["amocrm"]["calls"]) == ("ok", 0)
    assert body["amocrm"]["last_call"]["outcome"] == "server_error"  # still shown


def finished_call(at: datetime, outcome: str) -> ApiCall:
    status = {"server_error": 500, "accepted": 202, "rate_limited": 429, "forbidden": 403}
    return ApiCall(
        dispatcher="test",
        endpoint="/api/v2/salesbot/run",
        launch_count=1,
        started_at=at,
        finished_at=at,
        status_code=status.get(outcome),
        outcome=outcome,
    )


def test_healthz_is_degraded_when_launches_are_due_and_no_dispatcher_is_alive(
    client: Any, sessions: sessionmaker[Session]
) -> None:
    add_launches(sessions, 2)
    add_launches(sessions, 5, not_before=datetime.now(UTC) + timedelta(hours=1))
    with sessions.begin() as session:  # one that died a minute ago
        then = datetime.now(UTC) - timedelta(minutes=1)
        dispatchers.register(session, "dead", "host", 1, then)

    answer = client.get("/healthz")

    assert (answer.status_code, answer.json["status"]) == (200, "degraded")
    dispatch_part = answer.json["dispatch"]
    assert (dispatch_part["live_dispatchers"], dispatch_part["due_launches"]) == (0, 2)
    [reason] = answer.json["reasons"]
    assert reason.startswith("2 launch(es) due (the oldest since ")
    assert "no dispatcher has a heartbeat in the last 30s (last: " in reason
    assert reason.endswith("start `automation dispatch` or `automation serve`")


def test_healthz_is_ok_with_launches_due_while_a_dispatcher_is_alive(
    client: Any, sessions: sessionmaker[Session]
) -> None:
    add_launches(sessions, 2)
    with sessions.begin() as session:
        dispatchers.register(session, "alive", "host", 1, datetime.now(UTC))

    body = client.get("/healthz").json

    assert (body["status"], body["dispatch"]["live_dispatchers"]) == ("ok", 1)


def test_healthz_is_ok_without_a_dispatcher_while_nothing_is_due(
    client: Any, sessions: sessionmaker[Session]
) -> None:
    add_launches(sessions, 2, not_before=datetime.now(UTC) + timedelta(hours=1))

    body = client.get("/healthz").json

    assert (body["status"], body["dispatch"]["due_launches"]) == ("ok", 0)
    assert body["dispatch"]["last_heartbeat_at"] is None


def test_a_shared_hold_makes_healthz_degraded_and_says_until_when_and_why(
    client: Any, sessions: sessionmaker[Session]
) -> None:
    now = datetime.now(UTC)
    with sessions.begin() as session:
        budget.hold(session, now + timedelta(minutes=2), "amoCRM answered 500 five times", now)

    body = client.get("/healthz").json

    assert body["status"] == "degraded"
    [reason] = body["reasons"]
    assert reason == (
        f"sending is on hold until {body['dispatch']['paused_until']}: amoCRM answered 500 "
        "five times"
    )
