"""`GET /metrics`: what each part counts, the database gauges, and the totals of a real
multi-worker `automation serve` (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from automation import metrics
from automation.config import Settings
from automation.dispatch import loop as dispatch
from automation.store.database import make_engine, make_session_factory
from automation.store.models import DispatcherRow
from automation.web import serving
from tests.conftest import incoming_message
from tests.fake_amocrm import ACCESS_TOKEN, FakeAmoCRM
from tests.launches import add_launches, leads_form
from tests.web.test_serving import BIN, ROOT, free_port, server_env, wait_healthy

FORM = "application/x-www-form-urlencoded"
SALESBOT = "/api/v2/salesbot/run"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Prometheus text → {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: Any) -> Samples:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    return parse(answer.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def counted(name: str, **labels: str) -> float:
    """This process's count so far (tests measure differences: counters only grow)."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def counted_in_all(name: str) -> float:
    """`counted` summed over every label set the counter has seen so far (a name no
    metric has fails, rather than count a constant 0)."""
    [family] = [f for f in metrics.REGISTRY.collect() if f.name == name.removesuffix("_total")]
    return sum(sample.value for sample in family.samples if sample.name == name)


def post(client: Any, body: bytes, secret: str = "s3cret", **kwargs: Any) -> Any:
    kwargs.setdefault("content_type", FORM)
    return client.post(f"/webhooks/amocrm/{secret}", data=body, **kwargs)


def stage_change(lead_id: int, account_id: int = 30112233) -> bytes:
    """A lead moved to the stage the test rules' `qualified` rule watches."""
    return urlencode(
        {
            "account[id]": str(account_id),
            "leads[status][0][id]": str(lead_id),
            "leads[status][0][status_id]": "59936202",
            "leads[status][0][pipeline_id]": "7173574",
        }
    ).encode()


# ----------------------------------------------------------------- the web process


def test_metrics_page_is_prometheus_text_naming_every_metric(client: Any) -> None:
    answer = client.get("/metrics")

    assert answer.status_code == 200
    assert answer.content_type == "text/plain; version=0.0.4; charset=utf-8"
    names = {family.name for family in text_string_to_metric_families(answer.text)}
    assert names >= {
        "automation_webhooks",
        "automation_webhook_duration_seconds",
        "automation_webhook_events",
        "automation_launches_matched",
        "automation_launches_enqueued",
        "automation_launches_settled",
        "automation_amocrm_requests",
        "automation_amocrm_request_duration_seconds",
        "automation_rules_reload_errors",
        "automation_rules_last_reload_success",
        "automation_database_up",
        "automation_launches_due",
        "automation_launches_due_oldest_age_seconds",
        "automation_dispatcher_last_heartbeat_timestamp_seconds",
        "automation_last_webhook_received_timestamp_seconds",
    }


def test_metrics_are_openmetrics_when_the_scraper_asks(client: Any) -> None:
    answer = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})

    assert answer.content_type.startswith("application/openmetrics-text")
    assert answer.text.endswith("# EOF\n")


def test_each_webhook_answer_is_counted_under_its_outcome(
    make_settings: Callable[..., Settings],
    make_app: Callable[[Settings], Any],
    webhook_body: Callable[[str], bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app(make_settings(amocrm_account_id=30112233, max_body_bytes=2000))
    app.config.update(TESTING=False, PROPAGATE_EXCEPTIONS=False)  # a bug answers 500
    client = app.test_client()
    before = scrape(client)

    assert post(client, webhook_body("status_lead")).status_code == 200
    assert post(client, b"account%5Bid%5D=30112233&catalogs%5Badd%5D%5B0%5D%5Bid%5D=5").json
    assert post(client, b"leads%5Badd=1").status_code == 400
    assert post(client, stage_change(5, account_id=111)).status_code == 403
    assert post(client, webhook_body("status_lead"), secret="guess").status_code == 404
    assert post(client, b"x=" + b"1" * 2000).status_code == 413
    assert post(client, b"<xml/>", content_type="text/xml").status_code == 415
    with monkeypatch.context() as patch:
        patch.setattr("automation.web.bodies.BODY_SECONDS", 0)  # any failing read is late
        stalled = client.post(
            "/webhooks/amocrm/s3cret",
            input_stream=_Stalled(),
            content_type=FORM,
            environ_overrides={"CONTENT_LENGTH": "10"},
        )
        assert stalled.status_code == 408
    roomy = make_app(make_settings(amocrm_account_id=30112233)).test_client()
    assert post(roomy, leads_form(10_001)).json["status"] == "queued"
    unconfigured = make_app(make_settings(webhook_secret=None)).test_client()
    assert post(unconfigured, webhook_body("status_lead")).status_code == 503
    monkeypatch.setattr("automation.web.webhooks.store", _broken_store)
    assert post(client, webhook_body("status_lead")).status_code == 500

    after = scrape(client)
    grew = {
        outcome: value(after, "automation_webhooks_total", outcome=outcome)
        - value(before, "automation_webhooks_total", outcome=outcome)
        for outcome in metrics.WEBHOOK_OUTCOMES
    }
    assert grew == dict.fromkeys(metrics.WEBHOOK_OUTCOMES, 1.0)
    timed = "automation_webhook_duration_seconds_count"
    assert value(after, timed) - value(before, timed) == 11


def _broken_store(*args: Any) -> Any:
    raise RuntimeError("a bug in storing")


class _Stalled(io.RawIOBase):
    """A client that sent its headers and then nothing, until the socket timed out."""

    def readable(self) -> bool:
        return True

    def readinto(self, _buffer: Any) -> int:
        raise TimeoutError("timed out")

    def tell(self) -> int:  # werkzeug's test client measures the stream first
        return 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0


def test_a_stored_webhook_counts_its_events_and_launches_by_rule_and_result(
    client: Any, webhook_body: Callable[[str], bytes]
) -> None:
    before = scrape(client)

    post(client, webhook_body("status_lead"))
    post(client, webhook_body("status_lead"))  # the same delivery again: a duplicate
    post(client, incoming_message("m-1"))
    post(client, incoming_message("m-2"))  # same contact within the rule's cooldown: skipped

    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("automation_webhook_events_total", type="lead.status_changed") == 2
    assert grew("automation_webhook_events_total", type="message.added") == 2
    assert grew("automation_launches_matched_total", rule="qualified") == 2
    assert grew("automation_launches_matched_total", rule="first-message") == 2
    assert grew("automation_launches_enqueued_total", result="pending") == 2
    assert grew("automation_launches_enqueued_total", result="duplicate") == 1
    assert grew("automation_launches_enqueued_total", result="skipped") == 1


def test_database_gauges_show_backlog_heartbeat_and_last_webhook(
    app: Any, client: Any, webhook_body: Callable[[str], bytes]
) -> None:
    sessions = app.extensions["automation"].sessions
    now = datetime.now(UTC)
    add_launches(sessions, 3, not_before=now - timedelta(seconds=60))
    add_launches(sessions, 2, first_entity=5000, not_before=now + timedelta(hours=1))
    beat = datetime(2026, 11, 25, 12, 0, 0, 250000, tzinfo=UTC)
    with sessions.begin() as session:
        session.add(DispatcherRow(id="d1", host="h", pid=1, started_at=beat, heartbeat_at=beat))
    posted_at = time.time()
    post(client, webhook_body("add_contact"))  # stores a delivery, launches nothing

    samples = scrape(client)

    assert value(samples, "automation_database_up") == 1
    assert value(samples, "automation_launches_due") == 3
    assert 60 <= value(samples, "automation_launches_due_oldest_age_seconds") < 90
    assert value(samples, "automation_dispatcher_last_heartbeat_timestamp_seconds") == (
        beat.timestamp()
    )
    last_webhook = value(samples, "automation_last_webhook_received_timestamp_seconds")
    assert posted_at - 1 <= last_webhook <= time.time()


def test_an_empty_database_gives_zero_gauges(client: Any) -> None:
    samples = scrape(client)

    assert value(samples, "automation_launches_due") == 0
    assert value(samples, "automation_launches_due_oldest_age_seconds") == 0
    assert value(samples, "automation_dispatcher_last_heartbeat_timestamp_seconds") == 0
    assert value(samples, "automation_last_webhook_received_timestamp_seconds") == 0


def test_an_unreachable_database_shows_as_database_up_0_not_a_failed_scrape(
    app: Any, client: Any
) -> None:
    broken = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    app.extensions["automation"].sessions = make_session_factory(broken)
    try:
        samples = scrape(client)
    finally:
        broken.dispose()

    assert value(samples, "automation_database_up") == 0
    assert ("automation_launches_due", ()) not in samples
    assert value(samples, "automation_webhooks_total", outcome="accepted") >= 0


def _touch_later(path: Path, text: str) -> None:
    """Write `text` with a future mtime, so the loader sees a change at once."""
    path.write_text(text)
    later = time.time() + 5
    os.utime(path, (later, later))


def test_rules_reload_errors_count_each_new_error_and_success_follows_the_file(
    app: Any, client: Any, rules_file: Path
) -> None:
    app.extensions["automation"].rules.interval = 0  # look at the file on every scrape
    good = rules_file.read_text()
    before = scrape(client)
    assert value(before, "automation_rules_last_reload_success") == 1

    _touch_later(rules_file, "version: 1\nrules:\n  - name: x\n    on: lead.nope\n")
    broken = scrape(client)
    again = scrape(client)
    rules_file.write_text(good)
    fixed = scrape(client)

    errors = "automation_rules_reload_errors_total"
    assert value(broken, "automation_rules_last_reload_success") == 0
    assert value(broken, errors) - value(before, errors) == 1
    assert value(again, errors) == value(broken, errors)  # the same error counts once
    assert value(fixed, "automation_rules_last_reload_success") == 1
    assert value(fixed, errors) == value(broken, errors)


# ------------------------------------------------------------------ the dispatcher


@pytest.fixture
def live_settings(make_settings: Callable[..., Settings], fake: FakeAmoCRM) -> Settings:
    return make_settings(
        amocrm_base_url=fake.url, amocrm_access_token=ACCESS_TOKEN, amocrm_max_rps=50
    )


def test_the_dispatcher_counts_sent_and_failed_launches_and_each_amocrm_request(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    fake.reject_bots([9])
    add_launches(sessions, 3, bot_id=7)
    sent, failed = (
        counted("automation_launches_settled_total", status="sent"),
        counted("automation_launches_settled_total", status="failed"),
    )
    accepted = counted(
        "automation_amocrm_requests_total", endpoint=SALESBOT, status="202", outcome="accepted"
    )
    timed = counted("automation_amocrm_request_duration_seconds_count", endpoint=SALESBOT)

    dispatch.build(live_settings, sessions, read_timeout=2).run(once=True)
    add_launches(sessions, 1, bot_id=9, first_entity=9000)
    rejected = counted(
        "automation_amocrm_requests_total", endpoint=SALESBOT, status="400", outcome="bad_request"
    )
    dispatch.build(live_settings, sessions, read_timeout=2).run(once=True)

    assert counted("automation_launches_settled_total", status="sent") - sent == 3
    assert counted("automation_launches_settled_total", status="failed") - failed == 1
    assert (
        counted(
            "automation_amocrm_requests_total", endpoint=SALESBOT, status="202", outcome="accepted"
        )
        - accepted
        == 1
    )
    assert (
        counted(
            "automation_amocrm_requests_total",
            endpoint=SALESBOT,
            status="400",
            outcome="bad_request",
        )
        - rejected
        == 1
    )
    assert (
        counted("automation_amocrm_request_duration_seconds_count", endpoint=SALESBOT) - timed == 2
    )


def test_a_lost_answer_counts_uncertain_launches_and_a_request_without_status(
    live_settings: Settings, sessions: sessionmaker[Session], fake: FakeAmoCRM
) -> None:
    fake.stall_next(1, 3.0)
    add_launches(sessions, 2)
    uncertain = counted("automation_launches_settled_total", status="uncertain")
    unanswered = counted(
        "automation_amocrm_requests_total", endpoint=SALESBOT, status="none", outcome="uncertain"
    )

    dispatch.build(live_settings, sessions, read_timeout=0.3).run(once=True)

    assert counted("automation_launches_settled_total", status="uncertain") - uncertain == 2
    assert (
        counted(
            "automation_amocrm_requests_total",
            endpoint=SALESBOT,
            status="none",
            outcome="uncertain",
        )
        - unanswered
        == 1
    )


def test_a_dry_run_counts_dry_run_launches_and_no_request(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session]
) -> None:
    add_launches(sessions, 4)
    dry = counted("automation_launches_settled_total", status="dry_run")
    requests_before = counted_in_all("automation_amocrm_requests_total")

    dispatch.build(make_settings(dry_run=True), sessions).run(once=True)

    assert counted("automation_launches_settled_total", status="dry_run") - dry == 4
    requests_after = counted_in_all("automation_amocrm_requests_total")
    assert requests_after == requests_before


# ------------------------------------------------------- several processes, one scrape


def test_a_dead_workers_live_gauges_are_dropped_and_its_counters_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in ("gauge_livemostrecent_4242.db", "counter_4242.db", "gauge_livemostrecent_1.db"):
        (tmp_path / name).write_bytes(b"")

    serving.mark_worker_dead(None, SimpleNamespace(pid=4242))

    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "counter_4242.db",
        "gauge_livemostrecent_1.db",
    ]


def test_serve_shares_a_fresh_empty_metrics_directory_with_its_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "restored after the test")

    path = Path(serving.share_metrics_dir())

    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(path)
    assert path.parent == tmp_path
    assert path.name.startswith("automation-metrics-")
    assert list(path.iterdir()) == []


def _post_concurrently(url: str, lead_ids: range) -> None:
    def one(lead_id: int) -> None:
        answer = requests.post(
            f"{url}/webhooks/amocrm/s3cret/",
            data=stage_change(lead_id),
            headers={"Content-Type": FORM},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, lead_ids))


def _accepted_by_process(metrics_dir: Path) -> dict[str, float]:
    """Accepted webhooks per process, from each process's own counter file."""
    counts = {}
    for path in sorted(metrics_dir.glob("counter_*.db")):
        merged = MultiProcessCollector.merge([str(path)])
        counts[path.stem] = sum(
            sample.value
            for family in merged
            for sample in family.samples
            if sample.name == "automation_webhooks_total" and sample.labels["outcome"] == "accepted"
        )
    return counts


def _settled_dry_run(url: str, expected: float, seconds: float = 30) -> Samples:
    """Scrape until the dispatcher child settled `expected` launches as dry_run."""
    deadline = time.monotonic() + seconds
    while True:
        samples = parse(requests.get(f"{url}/metrics", timeout=10).text)
        done = value(samples, "automation_launches_settled_total", status="dry_run")
        if done >= expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def test_one_scrape_adds_up_every_gunicorn_worker_and_the_dispatcher(
    database_url: str, rules_file: Path, tmp_path: Path
) -> None:
    port, url = free_port(), ""
    env = server_env(database_url, rules_file) | {"TMPDIR": str(tmp_path)}
    command = [str(BIN / "automation"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        [metrics_dir] = tmp_path.glob("automation-metrics-*")
        posted = 0
        while sum(1 for n in _accepted_by_process(metrics_dir).values() if n) < 2:
            assert posted < 400, "every webhook landed on one worker"
            _post_concurrently(url, range(posted + 1, posted + 9))
            posted += 8
        requests.post(f"{url}/webhooks/amocrm/wrong/", data=b"a=1", timeout=10)

        scrapes = [_settled_dry_run(url, posted), *(_settled_dry_run(url, posted) for _ in "abc")]
    finally:
        process.terminate()
        process.wait(20)

    for samples in scrapes:  # whichever worker answered
        assert value(samples, "automation_webhooks_total", outcome="accepted") == posted
        assert value(samples, "automation_webhooks_total", outcome="not_found") == 1
        assert value(samples, "automation_launches_matched_total", rule="qualified") == posted
        assert value(samples, "automation_launches_settled_total", status="dry_run") == posted
        assert value(samples, "automation_launches_due") == 0
        assert value(samples, "automation_dispatcher_last_heartbeat_timestamp_seconds") > 0
    assert not metrics_dir.exists()  # removed when the server stopped
