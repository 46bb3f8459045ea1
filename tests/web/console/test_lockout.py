"""The login lockout: too many refused logins from one address answer 429, even for
the right token, until the window has passed; counted in the database, so every
worker and restart sees the same count; behind proxies, per client."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import EnvironBuilder

from automation.config import Settings
from automation.store.models import LoginFailure
from automation.web.console import auth
from tests.web.console.conftest import ADMIN, VIEWER, csrf_token

ALLOWED = auth.LOCKOUT_FAILURES
CLIENT = "198.51.100.7"
START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def try_login(
    client: FlaskClient, token: str, address: str = CLIENT, headers: dict[str, str] | None = None
) -> Any:
    return client.post(
        "/ui/login",
        data={"token": token, "csrf_token": csrf_token(client)},
        environ_base={"REMOTE_ADDR": address},
        headers=headers or {},
    )


def fail(client: FlaskClient, times: int, address: str = CLIENT, **options: Any) -> None:
    for _ in range(times):
        assert try_login(client, "wrong-guess", address, **options).status_code == 401


def stored_failures(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.execute(select(func.count()).select_from(LoginFailure)).scalar_one())


def test_after_the_allowed_failures_even_the_right_token_gets_429(
    anonymous: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with freeze_time(START), caplog.at_level(logging.WARNING, logger="automation.console"):
        fail(anonymous, ALLOWED)
        answer = try_login(anonymous, ADMIN)

    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "900"
    page = answer.get_data(as_text=True)
    assert "Too many failed logins from your address (10 within 15 minutes)" in page
    assert "even with the right token, for 15 min more, until 2026-12-01 08:15:00 UTC" in page
    assert anonymous.get("/ui/").status_code == 302  # not logged in
    assert f"wrong token from {CLIENT} (10 of 10 allowed within 15 min)" in caplog.text
    assert f"console login locked for {CLIENT}" in caplog.text
    assert f"{CLIENT} is locked out for 900 s more" in caplog.text
    assert ADMIN not in caplog.text and "wrong-guess" not in caplog.text


def test_one_failure_fewer_still_lets_the_right_token_in(anonymous: FlaskClient) -> None:
    fail(anonymous, ALLOWED - 1)
    assert try_login(anonymous, VIEWER).status_code == 302
    assert anonymous.get("/ui/").status_code == 200


def test_the_lock_lifts_when_the_oldest_failure_leaves_the_window(
    anonymous: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    with freeze_time(START):
        fail(anonymous, 1)
    with freeze_time(START + timedelta(minutes=5)):
        fail(anonymous, ALLOWED - 1)
    with freeze_time(START + timedelta(minutes=10)):
        locked = try_login(anonymous, ADMIN)
    assert (locked.status_code, locked.headers["Retry-After"]) == (429, "300")
    with freeze_time(START + timedelta(minutes=15, seconds=1)):
        # the first failure left the window: one guess more, and locked again
        fail(anonymous, 1)
        assert try_login(anonymous, ADMIN).status_code == 429
    with freeze_time(START + timedelta(minutes=20, seconds=1)):
        assert try_login(anonymous, ADMIN).status_code == 302
    assert stored_failures(sessions) == ALLOWED  # the expired one was deleted


def test_a_locked_attempt_is_not_counted_so_the_lock_ends_on_time(
    anonymous: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    with freeze_time(START):
        fail(anonymous, ALLOWED)
    with freeze_time(START + timedelta(minutes=14)):
        for _ in range(5):
            assert try_login(anonymous, "still-guessing").status_code == 429
    assert stored_failures(sessions) == ALLOWED
    with freeze_time(START + timedelta(minutes=15, seconds=1)):
        assert try_login(anonymous, ADMIN).status_code == 302


def test_other_addresses_are_not_locked(anonymous: FlaskClient, console_app: Flask) -> None:
    fail(anonymous, ALLOWED)
    assert try_login(anonymous, ADMIN).status_code == 429
    other = console_app.test_client()
    assert try_login(other, ADMIN, address="203.0.113.50").status_code == 302


def test_the_count_holds_across_workers_and_restarts(
    anonymous: FlaskClient,
    make_app: Callable[[Settings], Flask],
    console_settings: Settings,
) -> None:
    fail(anonymous, ALLOWED // 2)
    another_worker = make_app(console_settings)
    another_worker.config["CONSOLE_FAILED_LOGIN_DELAY"] = 0
    client = another_worker.test_client()
    fail(client, ALLOWED - ALLOWED // 2)
    assert try_login(client, ADMIN).status_code == 429
    restarted = make_app(console_settings)
    assert try_login(restarted.test_client(), ADMIN).status_code == 429


def test_a_post_refused_for_its_form_token_counts_nothing(
    anonymous: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    for _ in range(ALLOWED + 2):
        answer = anonymous.post(
            "/ui/login", data={"token": "x"}, environ_base={"REMOTE_ADDR": CLIENT}
        )
        assert answer.status_code == 403
    assert stored_failures(sessions) == 0
    assert try_login(anonymous, ADMIN).status_code == 302


def test_attempts_at_the_same_moment_get_no_more_guesses_than_allowed(
    console_app: Flask, sessions: sessionmaker[Session]
) -> None:
    """Twice the allowance at once, from many threads: each attempt is judged after
    the one before it was counted, so exactly the allowance is refused with 401."""
    statuses: list[int] = []
    clients = [console_app.test_client() for _ in range(2 * ALLOWED)]
    tokens = [csrf_token(client) for client in clients]
    start = threading.Barrier(len(clients))

    def attempt(client: FlaskClient, token: str) -> None:
        start.wait()
        answer = client.post(
            "/ui/login",
            data={"token": "guess", "csrf_token": token},
            environ_base={"REMOTE_ADDR": CLIENT},
        )
        statuses.append(answer.status_code)

    threads = [
        threading.Thread(target=attempt, args=pair) for pair in zip(clients, tokens, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [401] * ALLOWED + [429] * ALLOWED
    assert stored_failures(sessions) == ALLOWED


# --------------------------------------------------------------------------- proxies


def test_without_proxy_hops_a_forwarded_header_changes_nothing(anonymous: FlaskClient) -> None:
    for n in range(ALLOWED):
        forged = {"X-Forwarded-For": f"192.0.2.{n}"}
        assert try_login(anonymous, "guess", headers=forged).status_code == 401
    fresh = {"X-Forwarded-For": "192.0.2.200"}
    assert try_login(anonymous, ADMIN, headers=fresh).status_code == 429


def test_behind_a_proxy_each_client_is_counted_by_the_address_the_proxy_saw(
    make_app: Callable[[Settings], Flask], make_settings: Callable[..., Settings]
) -> None:
    app = make_app(make_settings(admin_token=ADMIN, console_proxy_hops=1))
    app.config["CONSOLE_FAILED_LOGIN_DELAY"] = 0
    client = app.test_client()
    proxy = "10.0.0.2"
    guesser = {"X-Forwarded-For": "203.0.113.9"}
    for n in range(ALLOWED):  # what the guesser writes itself is left of the proxy's entry
        headers = {"X-Forwarded-For": f"192.0.2.{n}, 203.0.113.9"}
        assert try_login(client, "guess", proxy, headers).status_code == 401
    assert try_login(client, ADMIN, proxy, guesser).status_code == 429
    colleague = {"X-Forwarded-For": "203.0.113.10"}
    assert try_login(app.test_client(), ADMIN, proxy, colleague).status_code == 302


@pytest.mark.parametrize(
    ("hops", "headers", "address"),
    [
        (0, {"X-Forwarded-For": "192.0.2.1"}, "10.0.0.2"),
        (1, {"X-Forwarded-For": "192.0.2.1"}, "192.0.2.1"),
        (1, {"X-Forwarded-For": "6.6.6.6, 192.0.2.1"}, "192.0.2.1"),
        (2, {"X-Forwarded-For": "6.6.6.6, 192.0.2.1, 10.0.0.9"}, "192.0.2.1"),
        (2, {"X-Forwarded-For": "192.0.2.1"}, "10.0.0.2"),  # did not come through both
        (1, {}, "10.0.0.2"),
        (1, {"X-Forwarded-For": " , "}, "10.0.0.2"),
    ],
)
def test_the_client_address_counted(hops: int, headers: dict[str, str], address: str) -> None:
    environ = EnvironBuilder(headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.2"})
    request = Flask(__name__).request_class(environ.get_environ())
    assert auth.client_address(request, hops) == address


def test_two_forwarded_headers_read_as_one_list() -> None:
    builder = EnvironBuilder(environ_base={"REMOTE_ADDR": "10.0.0.2"})
    builder.headers.add("X-Forwarded-For", "6.6.6.6")
    builder.headers.add("X-Forwarded-For", "192.0.2.1, 10.0.0.9")
    request = Flask(__name__).request_class(builder.get_environ())
    assert auth.client_address(request, 2) == "192.0.2.1"
