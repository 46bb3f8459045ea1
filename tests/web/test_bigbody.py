"""Large webhooks: stored raw, answered `queued` at once, expanded by the dispatcher.

Through Flask's test client for the answers, and through `automation serve` (real
gunicorn, its dispatcher and that dispatcher's expander) for the whole way: 30,000
leads in one body, a small webhook answered meanwhile, a dispatcher SIGKILLed mid-way.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from automation.cli import main
from automation.dispatch.expander import Expander
from automation.store.models import Delivery, Launch, QueuedDelivery
from automation.store.states import DeliveryStatus
from tests.gunicorn import FORM, Server, children_of, command_line, running, server_env
from tests.launches import leads_form

ROOT = Path(__file__).resolve().parents[2]
AUTOMATION = str(Path(sys.executable).parent / "automation")
LEADS_ADDED = """\
version: 1
rules:
  - name: welcome-new-lead
    on: lead.added
    launch: {bot_id: 404, entity: lead}
  - name: qualified
    on: lead.status_changed
    when:
      status_id: 59936202
    launch: {bot_id: 101, entity: lead}
"""
SMALL = (Path(__file__).parents[1] / "fixtures" / "webhooks" / "status_lead.form").read_bytes()


@pytest.fixture
def leads_rules(tmp_path: Path) -> Path:
    path = tmp_path / "leads.yaml"
    path.write_text(LEADS_ADDED)
    return path


@pytest.fixture
def leads_client(
    make_app: Callable[..., Any], make_settings: Callable[..., Any], leads_rules: Path
) -> Any:
    return make_app(make_settings(rules_file=str(leads_rules))).test_client()


def post(client: Any, body: bytes, content_type: str = FORM) -> Any:
    return client.post("/webhooks/amocrm/s3cret", data=body, content_type=content_type)


def queue_rows(sessions: sessionmaker[Session]) -> list[QueuedDelivery]:
    with sessions() as session:
        rows = list(session.scalars(select(QueuedDelivery)))
        session.expunge_all()
        return rows


# ------------------------------------------------------------------- the answers


def test_a_body_of_more_fields_than_decoded_at_once_is_stored_raw_and_answered_queued(
    leads_client: Any, sessions: sessionmaker[Session]
) -> None:
    answer = post(leads_client, leads_form(10_001))

    assert answer.status_code == 200
    # The keys every 200 has (the contract scripts read): nothing stored yet.
    assert answer.json == {
        "delivery_id": answer.json["delivery_id"],
        "events": 0,
        "launches": 0,
        "status": "queued",
    }
    with sessions() as session:
        stored = session.get(Delivery, answer.json["delivery_id"])
        assert stored is not None
        assert (stored.status, stored.account_id, stored.launch_count) == ("queued", 30112233, 0)
        assert session.scalar(select(func.count()).select_from(Launch)) == 0
    assert [row.delivery_id for row in queue_rows(sessions)] == [answer.json["delivery_id"]]


def test_a_decoded_body_of_more_launches_than_stored_at_once_is_queued(
    leads_client: Any, sessions: sessionmaker[Session]
) -> None:
    answer = post(leads_client, leads_form(201))  # few fields, but 201 launches

    assert answer.json["status"] == "queued"
    assert len(queue_rows(sessions)) == 1
    small = post(leads_client, leads_form(200, first=1))
    assert (small.json["events"], small.json["launches"]) == (200, 200)


def test_a_large_body_without_account_id_is_a_400_naming_the_field(
    leads_client: Any, sessions: sessionmaker[Session]
) -> None:
    answer = post(leads_client, leads_form(10_001, account=None))

    assert answer.status_code == 400
    assert answer.json["error"].startswith("field 'account[id]': a body of 10001 fields")
    assert queue_rows(sessions) == []


def test_a_large_body_of_another_account_is_refused_before_it_is_stored(
    make_app: Callable[..., Any],
    make_settings: Callable[..., Any],
    leads_rules: Path,
    sessions: sessionmaker[Session],
) -> None:
    settings = make_settings(rules_file=str(leads_rules), amocrm_account_id=5)
    answer = post(make_app(settings).test_client(), leads_form(10_001))

    assert answer.status_code == 403
    assert "account[id] 30112233; AMOCRM_ACCOUNT_ID allows only 5" in answer.json["error"]
    assert queue_rows(sessions) == []


# ------------------------------------------------------------------ what shows

TOKEN = "a-long-admin-token-for-tests-0123456789"


@pytest.fixture
def queued_app(
    make_app: Callable[..., Any],
    make_settings: Callable[..., Any],
    leads_rules: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """An app with one large webhook queued three minutes ago and nothing expanding it."""
    app = make_app(make_settings(rules_file=str(leads_rules), admin_token=TOKEN))
    answer = post(app.test_client(), leads_form(10_001))
    with app.extensions["automation"].sessions.begin() as session:
        row = session.get(QueuedDelivery, answer.json["delivery_id"])
        row.queued_at = row.queued_at - timedelta(minutes=3)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("RULES_FILE", str(leads_rules))
    app.delivery_id = answer.json["delivery_id"]
    return app


def test_healthz_is_degraded_while_a_large_webhook_waits_more_than_2_minutes(
    queued_app: Any,
) -> None:
    health = queued_app.test_client().get("/healthz").json

    assert health["status"] == "degraded"
    assert health["dispatch"]["queued_deliveries"] == 1
    assert health["dispatch"]["queued_too_long"] is True
    assert health["dispatch"]["queued_progress_at"] is None
    (reason,) = [r for r in health["reasons"] if "large webhook" in r]
    assert "not taken by any dispatcher for more than 2 minutes" in reason

    Expander(
        queued_app.extensions["automation"].sessions, lambda: "d", timedelta(seconds=30), "x"
    ).drain()
    health = queued_app.test_client().get("/healthz").json
    assert health["dispatch"]["queued_deliveries"] == 0
    assert not any("queued" in reason for reason in health["reasons"])


def hold(app: Any, progress_ago: timedelta) -> None:
    """A dispatcher holds the queued delivery; its last chunk was `progress_ago`."""
    with app.extensions["automation"].sessions.begin() as session:
        row = session.get(QueuedDelivery, app.delivery_id)
        row.claim_token, row.claimed_by, row.claims = "t" * 32, "d1", 1
        row.claimed_at = datetime.now(UTC) - progress_ago


def test_healthz_is_ok_while_a_large_webhook_queued_long_ago_makes_progress(
    queued_app: Any,
) -> None:
    hold(queued_app, timedelta(seconds=5))  # queued 3 minutes ago, a chunk 5 s ago

    health = queued_app.test_client().get("/healthz").json

    assert health["dispatch"]["queued_too_long"] is False
    assert health["dispatch"]["queued_unclaimed_since"] is None
    assert not any("large webhook" in reason for reason in health["reasons"])


def test_healthz_is_degraded_when_a_large_webhooks_expansion_makes_no_progress(
    queued_app: Any,
) -> None:
    hold(queued_app, timedelta(minutes=2, seconds=10))

    health = queued_app.test_client().get("/healthz").json

    assert health["status"] == "degraded" and health["dispatch"]["queued_too_long"] is True
    (reason,) = [r for r in health["reasons"] if "large webhook" in r]
    assert "expansion has made no progress for more than 2 minutes" in reason


def test_healthz_counts_a_released_webhooks_wait_from_its_release(queued_app: Any) -> None:
    hold(queued_app, timedelta(seconds=5))
    with queued_app.extensions["automation"].sessions.begin() as session:
        row = session.get(QueuedDelivery, queued_app.delivery_id)
        row.claim_token = row.claimed_by = None  # let go of by a stopping dispatcher

    health = queued_app.test_client().get("/healthz").json

    assert health["dispatch"]["queued_too_long"] is False
    assert health["dispatch"]["queued_unclaimed_since"] is not None


def test_metrics_gauge_the_queued_webhooks_and_the_oldest_ones_age(queued_app: Any) -> None:
    page = queued_app.test_client().get("/metrics").get_data(as_text=True)

    assert "automation_deliveries_queued 1.0" in page
    age = re.search(r"^automation_deliveries_queued_oldest_age_seconds (\S+)$", page, re.M)
    assert age is not None and 180 <= float(age[1]) < 600
    # No dispatcher has held it for those 3 minutes: stalled as long (/healthz's rule).
    stalled = re.search(r"^automation_deliveries_queued_stalled_seconds (\S+)$", page, re.M)
    assert stalled is not None and 180 <= float(stalled[1]) < 600


def test_list_api_and_show_tell_a_queued_webhooks_progress(queued_app: Any) -> None:
    delivery_id = queued_app.delivery_id
    listed = CliRunner().invoke(main, ["deliveries", "list", "--status", "queued"])
    assert listed.exit_code == 0, listed.output
    assert f"{delivery_id}" in listed.output and "queued 0/?" in listed.output

    client = queued_app.test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    page = client.get("/api/deliveries?status=queued", headers=auth).json
    assert page["deliveries"][0]["expansion"]["launches_done"] == 0
    Expander(
        queued_app.extensions["automation"].sessions, lambda: "d", timedelta(seconds=30), "x"
    ).drain()

    detail = client.get(f"/api/deliveries/{delivery_id}", headers=auth).json
    assert detail["delivery"]["status"] == "accepted"
    assert detail["expansion"]["planned"] == detail["expansion"]["launches_done"] == 10_001
    shown = CliRunner().invoke(main, ["deliveries", "show", str(delivery_id)])
    assert "large webhook stored raw: expanded at " in shown.output
    assert "10001 of 10001 launches planned" in shown.output


# ---------------------------------------------------------- through `automation serve`


def serve_env(database_url: str, rules_file: Path) -> dict[str, str]:
    return server_env(
        database_url,
        rules_file,
        DRY_RUN="1",
        DISPATCHER_DEAD_AFTER="2",
        MAX_BODY_BYTES=str(2 * 1024 * 1024),
    )


@pytest.fixture
def served(database_url: str, leads_rules: Path, tmp_path: Path) -> Iterator[Server]:
    command = [AUTOMATION, "serve", "--bind", "127.0.0.1:{port}", "--workers", "2"]
    env = serve_env(database_url, leads_rules)
    with running(command, env, tmp_path / "server.log") as server:
        yield server


def wait_for(condition: Callable[[], bool], seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def progress(sessions: sessionmaker[Session], delivery_id: int) -> QueuedDelivery:
    with sessions() as session:
        row = session.get(QueuedDelivery, delivery_id)
        assert row is not None
        session.expunge(row)
        return row


def launches_of(sessions: sessionmaker[Session], delivery_id: int) -> tuple[int, int]:
    """(launches, distinct entities) stored for the delivery."""
    with sessions() as session:
        found = select(func.count(), func.count(Launch.entity_id.distinct())).where(
            Launch.delivery_id == delivery_id
        )
        total, distinct = session.execute(found).one()
    return int(total), int(distinct)


def test_30000_leads_are_answered_queued_and_expanded_once_while_small_webhooks_go_through(
    served: Server, sessions: sessionmaker[Session]
) -> None:
    hook = f"{served.url}/webhooks/amocrm/s3cret"
    answer = requests.post(
        hook, data=leads_form(30_000), headers={"Content-Type": FORM}, timeout=30
    )
    assert answer.status_code == 200 and answer.json()["status"] == "queued"
    delivery_id = answer.json()["delivery_id"]

    wait_for(lambda: progress(sessions, delivery_id).launches_done > 0)
    small = requests.post(hook, data=SMALL, headers={"Content-Type": FORM}, timeout=30)
    assert small.status_code == 200 and small.json()["launches"] == 1
    wait_for(lambda: progress(sessions, delivery_id).finished_at is not None)

    assert launches_of(sessions, delivery_id) == (30_000, 30_000)
    with sessions() as session:
        stored = session.get(Delivery, delivery_id)
        assert stored is not None
        assert (stored.status, stored.event_count) == (DeliveryStatus.ACCEPTED, 30_000)
        assert (stored.launch_count, stored.duplicate_count) == (30_000, 0)


def dispatcher_of(server: Server) -> int:
    found = [pid for pid in children_of(server.process.pid) if "dispatch" in command_line(pid)]
    assert len(found) == 1, found
    return found[0]


def test_a_dispatcher_killed_mid_expansion_leaves_the_rest_to_the_next_with_no_launch_twice(
    served: Server,
    sessions: sessionmaker[Session],
    database_url: str,
    leads_rules: Path,
) -> None:
    hook = f"{served.url}/webhooks/amocrm/s3cret"
    answer = requests.post(
        hook, data=leads_form(30_000), headers={"Content-Type": FORM}, timeout=30
    )
    delivery_id = answer.json()["delivery_id"]
    wait_for(lambda: progress(sessions, delivery_id).launches_done > 0)

    os.kill(dispatcher_of(served), signal.SIGKILL)
    cut = progress(sessions, delivery_id)
    assert cut.finished_at is None and cut.launches_done < 30_000

    # The dispatcher serve starts again, and one started by hand, wait for its heartbeat
    # and its claim to go stale (DISPATCHER_DEAD_AFTER); one of them takes the claim over.
    env = serve_env(database_url, leads_rules)
    successor = subprocess.Popen([AUTOMATION, "dispatch"], cwd=ROOT, env=env)
    try:
        wait_for(lambda: progress(sessions, delivery_id).finished_at is not None)
    finally:
        successor.terminate()
        successor.wait(30)

    assert launches_of(sessions, delivery_id) == (30_000, 30_000)
    finished = progress(sessions, delivery_id)
    assert finished.claims >= 2 and finished.launches_done == 30_000
    with sessions() as session:
        stored = session.get(Delivery, delivery_id)
        assert stored is not None
        assert (stored.launch_count, stored.duplicate_count) == (30_000, 0)
