"""The console in a real browser: Debian's Chromium driven by Playwright against
`automation serve` (gunicorn and a dispatcher) with the fake amoCRM on loopback.

They run on SQLite and, when TEST_DATABASE_URL is set, again on PostgreSQL, each
backend with a server and a database of its own (created and dropped here).
These tests never skip: without Chromium they fail and say how to install it.
Set CONSOLE_SCREENSHOTS=<dir> to keep the screenshots the last test takes (the ones
in docs/ were made that way).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from automation.store.database import make_engine, make_session_factory, upgrade
from automation.store.models import Launch
from automation.store.states import LaunchStatus
from tests.conftest import BACKENDS, TEST_RULES, WEBHOOKS
from tests.fake_amocrm import FakeAmoCRM
from tests.launches import launch_values
from tests.postgres import scratch_database
from tests.web.console.conftest import ADMIN, VIEWER
from tests.web.test_serving import BIN, ROOT, free_port, wait_healthy

#: Milliseconds to wait for something the server does by itself (a live refresh
#: every 5 s, the dispatcher sending a retried launch): generous on a shared machine.
PATIENCE = 30_000


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail(
            "the browser tests need Debian's Chromium and never skip: install it with "
            "`apt-get update && apt-get install -y chromium` (.ci/run does)"
        )
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox"]
        )
        yield launched
        launched.close()


class Server:
    """`automation serve` on a free loopback port, and its database."""

    def __init__(self, url: str, sessions: sessionmaker[Session], fake: FakeAmoCRM) -> None:
        self.url = url
        self.sessions = sessions
        self.fake = fake

    def add(self, status: LaunchStatus, **values: Any) -> int:
        """Store a launch as the dispatcher would have left it; returns its id."""
        now = datetime.now(UTC)
        row = launch_values(now - timedelta(minutes=5), status=status, **values)
        if status is LaunchStatus.PENDING:
            row["not_before"] = now + timedelta(days=1)  # not due: it waits for us
        with self.sessions.begin() as session:
            return int(session.execute(insert(Launch).returning(Launch.id), [row]).scalar_one())

    def status(self, launch_id: int) -> LaunchStatus:
        with self.sessions() as session:
            return session.execute(select(Launch.status).where(Launch.id == launch_id)).scalar_one()

    def webhook(self, name: str) -> int:
        """Post a webhook fixture as amoCRM would; returns its delivery id."""
        return self.post((WEBHOOKS / f"{name}.form").read_bytes().strip())

    def post(self, body: bytes) -> int:
        answer = requests.post(
            f"{self.url}/webhooks/amocrm/s3cret",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return int(answer.json()["delivery_id"])


@pytest.fixture(scope="module", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database of this module's own, on each backend: SQLite in a temporary
    folder; on PostgreSQL (when TEST_DATABASE_URL is set) a database created here and
    dropped at the end, so the server never shares tables other tests truncate."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('console-browser') / 'automation.db'}"
        upgrade(url)
        yield url
        return
    admin_url = os.environ.get("TEST_DATABASE_URL")
    if not admin_url:
        pytest.skip("TEST_DATABASE_URL is not set: PostgreSQL tests skipped")
    with scratch_database(admin_url, "automation_browser") as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("console-server")
    (folder / "rules.yaml").write_text(TEST_RULES)
    port = free_port()
    with FakeAmoCRM() as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMOCRM_")}
        env.update(
            DATABASE_URL=database_url,
            RULES_FILE=str(folder / "rules.yaml"),
            WEBHOOK_SECRET="s3cret",
            ADMIN_TOKEN=ADMIN,
            VIEWER_TOKEN=VIEWER,
            AMOCRM_SUBDOMAIN="mybrand",
            AMOCRM_BASE_URL=fake.url,
            AMOCRM_ACCESS_TOKEN=fake.access_token,
        )
        command = [str(BIN / "automation"), "serve", "--bind", f"127.0.0.1:{port}"]
        process = subprocess.Popen([*command, "--workers", "1"], cwd=folder, env=env)
        url = f"http://127.0.0.1:{port}"
        engine = make_engine(database_url)
        try:
            wait_healthy(url, process, seconds=60)
            yield Server(url, make_session_factory(engine), fake)
        finally:
            process.terminate()
            process.wait(30)
            engine.dispose()


def log_in(browser: Browser, server: Server, token: str) -> Page:
    page = browser.new_page()
    page.set_default_timeout(PATIENCE)
    page.goto(f"{server.url}/ui/")
    expect(page).to_have_url(f"{server.url}/ui/login?next=/ui/")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    return page


def test_a_wrong_token_stays_on_the_login_page(browser: Browser, server: Server) -> None:
    page = browser.new_page()
    page.goto(f"{server.url}/ui/login")
    page.get_by_label("Token").fill("not-the-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("wrong token")
    page.close()


def test_a_filter_survives_a_reload_and_a_new_launch_appears_live(
    browser: Browser, server: Server
) -> None:
    page = log_in(browser, server, ADMIN)
    page.get_by_role("link", name="Launches", exact=True).click()
    page.get_by_label("Search").fill("rule:qualified lead:27754599")
    page.get_by_role("button", name="Filter").click()
    empty = "&status=&rule=&bot_id=&entity_id=&since=&until="  # the form's other fields
    expect(page).to_have_url(f"{server.url}/ui/launches?q=rule%3Aqualified+lead%3A27754599{empty}")
    page.reload()
    expect(page.get_by_label("Search")).to_have_value("rule:qualified lead:27754599")
    expect(page.get_by_role("cell", name="No launches match.")).to_be_visible()
    server.webhook("status_lead")  # stores a `qualified` launch on lead 27754599
    expect(page.get_by_role("cell", name="qualified")).to_be_visible(timeout=PATIENCE)
    expect(page.get_by_role("link", name="lead 27754599").first).to_have_attribute(
        "href", "https://mybrand.amocrm.ru/leads/detail/27754599"
    )
    page.close()


def test_an_admin_opens_a_pending_launch_and_cancels_it(browser: Browser, server: Server) -> None:
    launch = server.add(LaunchStatus.PENDING, rule="cancel-me")
    page = log_in(browser, server, ADMIN)
    page.goto(f"{server.url}/ui/launches?rule=cancel-me")
    page.get_by_role("link", name=f"#{launch}").click()
    expect(page.get_by_role("heading", name=f"Launch #{launch} pending")).to_be_visible()
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("heading", name=f"Launch #{launch} cancelled")).to_be_visible()
    expect(page.get_by_text(f"cancel by admin (launch #{launch})")).to_be_visible()
    assert server.status(launch) is LaunchStatus.CANCELLED
    page.close()


def test_an_admin_retries_a_failed_launch_and_the_dispatcher_sends_it(
    browser: Browser, server: Server
) -> None:
    launch = server.add(LaunchStatus.FAILED, rule="retry-me", last_error="amoCRM said 500")
    page = log_in(browser, server, ADMIN)
    page.goto(f"{server.url}/ui/launches/{launch}")
    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_text(f"launch #{launch} retried")).to_be_visible()
    for _ in range(PATIENCE // 500):  # the dispatcher takes it from pending
        if server.status(launch) is LaunchStatus.SENT:
            break
        page.wait_for_timeout(500)
    assert server.status(launch) is LaunchStatus.SENT
    page.reload()
    expect(page.get_by_role("heading", name=f"Launch #{launch} sent")).to_be_visible()
    page.close()


def test_retrying_an_uncertain_launch_warns_of_a_double_bot(
    browser: Browser, server: Server
) -> None:
    launch = server.add(LaunchStatus.UNCERTAIN, rule="unsure")
    page = log_in(browser, server, ADMIN)
    page.goto(f"{server.url}/ui/launches/{launch}")
    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("alert")).to_contain_text("same messages twice")
    assert server.status(launch) is LaunchStatus.UNCERTAIN
    page.get_by_role("link", name="Keep it as it is").click()
    expect(page.get_by_role("heading", name=f"Launch #{launch} uncertain")).to_be_visible()
    page.close()


def test_a_viewer_reads_but_cannot_act(browser: Browser, server: Server) -> None:
    launch = server.add(LaunchStatus.PENDING, rule="viewer-sees")
    page = log_in(browser, server, VIEWER)
    page.goto(f"{server.url}/ui/launches/{launch}")
    expect(page.get_by_role("heading", name=f"Launch #{launch} pending")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    expect(page.get_by_text("viewer (read only)")).to_be_visible()
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    answer = page.request.post(
        f"{server.url}/ui/launches/{launch}/cancel",
        form={"csrf_token": token or ""},
        headers={"Origin": server.url},
    )
    assert answer.status == 403
    assert server.status(launch) is LaunchStatus.PENDING
    page.close()


def status_change(lead: str, status_id: str = "59936202") -> bytes:
    """amoCRM's status-change webhook (tests/fixtures) for another lead and status:
    TEST_RULES' `qualified` launches only for status 59936202."""
    body = (WEBHOOKS / "status_lead.form").read_bytes().strip().replace(b"27754599", lead.encode())
    return body.replace(b"%5Bstatus_id%5D=59936202", f"%5Bstatus_id%5D={status_id}".encode())


def test_a_delivery_that_started_no_bot_says_why_and_links_to_launches(
    browser: Browser, server: Server
) -> None:
    lead = "31000001"  # its own lead: other tests' webhooks stay out of the filter
    nothing = server.post(status_change(lead, status_id="142"))
    launched = server.post(status_change(lead))
    with server.sessions() as session:
        launch = session.execute(
            select(Launch.id).where(Launch.delivery_id == launched)
        ).scalar_one()
    page = log_in(browser, server, VIEWER)
    page.get_by_role("link", name="Deliveries", exact=True).click()
    page.get_by_label("Entity id").fill(lead)
    page.get_by_role("button", name="Filter").click()
    listed = page.locator("tbody tr td:first-child a")
    expect(listed).to_have_text([f"#{launched}", f"#{nothing}"])  # newest first

    page.get_by_role("link", name=f"#{nothing}", exact=True).click()
    expect(page.get_by_role("heading", name=f"Delivery #{nothing}")).to_be_visible()
    failed = page.get_by_role("table", name="Conditions of qualified that failed")
    expect(failed.get_by_role("cell")).to_have_text(["status_id", "59936202", "142"])
    expect(page.get_by_role("listitem").filter(has_text="qualified")).to_contain_text(
        "conditions failed"
    )
    expect(page.get_by_role("heading", name="Launches it made")).to_be_visible()
    body = page.locator("details pre").first
    expect(body).to_be_hidden()  # the raw body is folded
    page.get_by_text("Raw body").click()
    expect(body).to_contain_text(f"%5Bid%5D={lead}")

    page.go_back()
    page.get_by_role("link", name=f"#{launched}", exact=True).click()
    made = page.get_by_role("listitem").filter(has_text="qualified").first
    expect(made).to_contain_text(f"made launch #{launch}")
    made.get_by_role("link", name=f"launch #{launch}").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Launch #{launch}")
    page.get_by_role("link", name=f"delivery #{launched}").click()  # and back from the launch
    expect(page.get_by_role("heading", name=f"Delivery #{launched}")).to_be_visible()
    page.close()


class _Attacker(BaseHTTPRequestHandler):
    """Another origin (same host, other port) whose page posts to the console."""

    target = ""

    def do_GET(self) -> None:
        form = (
            f'<form method="post" action="{self.target}">'
            '<input type="hidden" name="csrf_token" value="guessed"></form>'
            "<script>document.forms[0].submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(form)))
        self.end_headers()
        self.wfile.write(form)

    def log_message(self, *args: object) -> None:
        pass


def test_a_cross_site_post_with_the_session_cookie_is_refused(
    browser: Browser, server: Server
) -> None:
    launch = server.add(LaunchStatus.PENDING, rule="target")
    page = log_in(browser, server, ADMIN)
    handler = type("Handler", (_Attacker,), {"target": f"{server.url}/ui/launches/{launch}/cancel"})
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=attacker.serve_forever, daemon=True)
    thread.start()
    try:
        with page.expect_response(lambda r: r.url.endswith("/cancel")) as posted:
            page.goto(f"http://127.0.0.1:{attacker.server_port}/")
        assert posted.value.status == 403
        expect(page.get_by_role("alert")).to_contain_text("another site")
    finally:
        attacker.shutdown()
        attacker.server_close()
    assert server.status(launch) is LaunchStatus.PENDING
    page.close()


def test_every_page_renders_and_is_photographed(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    """A screenshot of each page (kept in CONSOLE_SCREENSHOTS when set), on a desktop
    and on a phone-sized screen where nothing may overflow sideways but tables."""
    server.webhook("status_lead")
    nothing = server.post(status_change("27754599", status_id="142"))
    server.add(LaunchStatus.FAILED, rule="qualified", last_error="amoCRM said 400")
    launch = server.add(LaunchStatus.UNCERTAIN, rule="qualified", reason="answer lost")
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page = log_in(browser, server, ADMIN)
    shots = {
        "overview": "/ui/",
        "launches": "/ui/launches",
        "launch": f"/ui/launches/{launch}",
        "bulk": "/ui/launches/bulk/retry?status=failed",
        "rules": "/ui/rules",
        "deliveries": "/ui/deliveries",
        "delivery": f"/ui/deliveries/{nothing}",
    }
    for name, path in shots.items():
        answer = page.goto(f"{server.url}{path}")
        assert answer is not None and answer.status == 200, name
        page.screenshot(path=str(folder / f"console-{name}.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    for path in [shots["delivery"], shots["deliveries"], "/ui/launches"]:
        page.goto(f"{server.url}{path}")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width}px wide on a phone"
    page.screenshot(path=str(folder / "console-phone.png"), full_page=True)
    page.close()
    assert ROOT.exists()
