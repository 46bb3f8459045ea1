"""Console fixtures: an app with both tokens, logged-in clients, launches in states."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from automation.config import Settings
from automation.store.models import Launch
from automation.store.states import LaunchStatus
from tests.launches import launch_values

ADMIN = "admin-token-for-tests-0123456789"
VIEWER = "viewer-token-for-tests-012345678"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def console_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(admin_token=ADMIN, viewer_token=VIEWER, amocrm_subdomain="mybrand")


@pytest.fixture
def console_app(make_app: Callable[[Settings], Any], console_settings: Settings) -> Any:
    app = make_app(console_settings)
    app.config["CONSOLE_FAILED_LOGIN_DELAY"] = 0
    return app


def csrf_token(client: FlaskClient, path: str = "/ui/login") -> str:
    """The form token of the page at `path`, as a browser would read it."""
    page = client.get(path)
    match = CSRF.search(page.get_data(as_text=True))
    assert match, f"no csrf_token on {path} ({page.status_code})"
    return match.group(1)


def log_in(client: FlaskClient, token: str) -> Any:
    return client.post("/ui/login", data={"token": token, "csrf_token": csrf_token(client)})


@pytest.fixture
def anonymous(console_app: Any) -> FlaskClient:
    return console_app.test_client()


@pytest.fixture
def admin(console_app: Any) -> FlaskClient:
    client = console_app.test_client()
    assert log_in(client, ADMIN).status_code == 302
    return client


@pytest.fixture
def viewer(console_app: Any) -> FlaskClient:
    client = console_app.test_client()
    assert log_in(client, VIEWER).status_code == 302
    return client


@pytest.fixture
def add_launch(sessions: sessionmaker[Session]) -> Callable[..., int]:
    """Store one launch (pending on lead 27754599 unless overridden); returns its id."""

    def add(status: LaunchStatus = LaunchStatus.PENDING, age: float = 60, **values: Any) -> int:
        at = datetime.now(UTC) - timedelta(seconds=age)
        row = launch_values(at, status=status, **values)
        if status is LaunchStatus.PENDING and "not_before" not in values:
            row["not_before"] = at + timedelta(hours=1)  # not due: no dispatcher takes it
        with sessions.begin() as session:
            return int(session.execute(insert(Launch).returning(Launch.id), [row]).scalar_one())

    return add
